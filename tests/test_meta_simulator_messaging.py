"""What the simulator enforces for sending, like Meta: pair limit, templates, BSUIDs, retries, statuses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from gateway.background_server import BackgroundServer
from meta.simulator import SimulatorState, create_simulator_app

SECRET = "app-secret"


@pytest.fixture(scope="module")
def received() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        bodies.append(json.loads(await request.body()))
        return Response(status_code=200)

    with BackgroundServer(app) as server:
        yield f"{server.url}/hook", bodies


@pytest.fixture(scope="module")
def sim(received: tuple[str, list[dict[str, Any]]]) -> Iterator[tuple[str, str, list[str], str]]:
    state = SimulatorState(pair_interval_s=1.0)
    with BackgroundServer(create_simulator_app(state)) as server:
        waba = httpx.post(f"{server.url}/_sim/wabas", json={
            "name": "Acme", "access_token": "tok", "app_secret": SECRET, "callback_url": received[0],
            "numbers": [{"display_phone_number": f"+1 555 000 {i}"} for i in range(4)]}).json()
        yield server.url, waba["waba_id"], [n["id"] for n in waba["numbers"]], "tok"


def _send(url: str, number: str, payload: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": "Bearer tok", **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{url}/v25.0/{number}/messages", headers=headers,
                      json={"messaging_product": "whatsapp", **payload})


def _open_window(url: str, number: str, customer: str, **extra: Any) -> None:
    assert httpx.post(f"{url}/_sim/inbound", json={"phone_number_id": number, "from": customer,
                                                   "deliver": False, **extra}).status_code == 200


def test_pair_limit_is_131056_and_per_number(sim: tuple[str, str, list[str], str]) -> None:
    url, _, numbers, _ = sim
    _open_window(url, numbers[0], "15550001")
    text = {"to": "15550001", "type": "text", "text": {"body": "one"}}
    assert _send(url, numbers[0], text).status_code == 200
    second = _send(url, numbers[0], text)
    assert second.status_code == 400 and second.json()["error"]["code"] == 131056
    time.sleep(1.05)
    assert _send(url, numbers[0], text).status_code == 200


def test_bsuid_recipients_and_idempotent_retries(sim: tuple[str, str, list[str], str]) -> None:
    url, _, numbers, _ = sim
    _open_window(url, numbers[1], "15550002", user_id="US.1234567890")
    sent = _send(url, numbers[1], {"recipient": "US.1234567890", "type": "text", "text": {"body": "hi"}}, key="k1")
    assert sent.status_code == 200 and sent.json()["contacts"] == [{"input": "US.1234567890",
                                                                    "user_id": "US.1234567890"}]
    again = _send(url, numbers[1], {"recipient": "US.1234567890", "type": "text", "text": {"body": "hi"}}, key="k1")
    assert again.json() == sent.json()  # the same answer, no second message (and no pair-limit error)
    listed = httpx.get(f"{url}/_sim/sent_messages", params={"phone_number_id": numbers[1]}).json()["data"]
    assert len(listed) == 1 and listed[0]["idempotency_key"] == "k1"
    # Injected failures: refused before sending, or accepted and then answered with an error.
    httpx.post(f"{url}/_sim/numbers/{numbers[1]}/failures", json={"failures": [
        {"http_status": 503, "code": 2}, {"http_status": 500, "code": 1, "accept": True}]})
    _open_window(url, numbers[1], "15550003")
    text = {"to": "15550003", "type": "text", "text": {"body": "x"}}
    assert _send(url, numbers[1], text, key="k2").status_code == 503
    assert _send(url, numbers[1], text, key="k2").status_code == 500
    assert _send(url, numbers[1], text, key="k2").status_code == 200
    listed = httpx.get(f"{url}/_sim/sent_messages", params={"to": "15550003"}).json()["data"]
    assert len(listed) == 1


def test_templates_must_exist_be_approved_and_get_their_parameters(sim: tuple[str, str, list[str], str]) -> None:
    url, waba_id, numbers, _ = sim
    created = httpx.post(f"{url}/v25.0/{waba_id}/message_templates", headers={"Authorization": "Bearer tok"}, json={
        "name": "shipped", "category": "UTILITY", "language": "en_US",
        "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped."}]}).json()

    def send(parameters: list[str], to: str) -> httpx.Response:
        return _send(url, numbers[2], {"to": to, "type": "template", "template": {
            "name": "shipped", "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}]}})

    assert send(["a", "b"], "15550010").json()["error"]["code"] == 132001  # pending
    httpx.post(f"{url}/_sim/templates/{created['id']}/review", json={"status": "APPROVED"})
    assert send(["a"], "15550011").json()["error"]["code"] == 132000
    assert send(["a", "b"], "15550012").status_code == 200
    httpx.post(f"{url}/_sim/templates/{created['id']}/review", json={"status": "PAUSED"})
    assert send(["a", "b"], "15550013").json()["error"]["code"] == 132015
    deleted = httpx.delete(f"{url}/v25.0/{waba_id}/message_templates", params={"name": "shipped"},
                           headers={"Authorization": "Bearer tok"})
    assert deleted.json() == {"success": True}
    assert send(["a", "b"], "15550014").json()["error"]["code"] == 132001


def test_automatic_statuses_and_review(sim: tuple[str, str, list[str], str],
                                       received: tuple[str, list[dict[str, Any]]]) -> None:
    url, waba_id, numbers, _ = sim
    bodies = received[1]
    httpx.put(f"{url}/_sim/numbers/{numbers[3]}/delivery", json={
        "sent_delay_s": 0.0, "delivered_delay_s": 0.05, "read_delay_s": 0.1, "reorder": True, "duplicate": True,
        "fail_recipients": ["15550021"]})
    _open_window(url, numbers[3], "15550020")
    _open_window(url, numbers[3], "15550021")
    ok = _send(url, numbers[3], {"to": "15550020", "type": "text", "text": {"body": "a"}}).json()["messages"][0]["id"]
    bad = _send(url, numbers[3], {"to": "15550021", "type": "text", "text": {"body": "b"}}).json()["messages"][0]["id"]

    def statuses(wamid: str) -> list[tuple[str, int]]:
        found = []
        for body in list(bodies):
            for change in body["entry"][0]["changes"]:
                for st in change["value"].get("statuses", []):
                    if st["id"] == wamid:
                        found.append((st["status"], int(st["timestamp"])))
        return found

    deadline = time.time() + 10
    while time.time() < deadline and (len(statuses(ok)) < 6 or len(statuses(bad)) < 4):
        time.sleep(0.05)
    # Newest first and each twice; Meta's timestamps still tell the true order.
    assert [s for s, _ in statuses(ok)] == ["read", "read", "delivered", "delivered", "sent", "sent"]
    assert [s for s, _ in statuses(bad)] == ["failed", "failed", "sent", "sent"]

    httpx.put(f"{url}/_sim/wabas/{waba_id}/review", json={"delay_s": 0.05, "status": "APPROVED",
                                                           "by_name": {"spam": {"status": "REJECTED"}}})
    httpx.post(f"{url}/v25.0/{waba_id}/message_templates", headers={"Authorization": "Bearer tok"}, json={
        "name": "spam", "category": "MARKETING", "language": "en_US",
        "components": [{"type": "BODY", "text": "Buy now"}]})
    deadline = time.time() + 10
    events: list[dict[str, Any]] = []
    while time.time() < deadline and not events:
        events = [c["value"] for b in list(bodies) for c in b["entry"][0]["changes"]
                  if c["field"] == "message_template_status_update" and c["value"]["message_template_name"] == "spam"]
        time.sleep(0.05)
    assert events and events[0]["event"] == "REJECTED"


def test_switching_review_on_reviews_the_templates_already_pending(
        sim: tuple[str, str, list[str], str], received: tuple[str, list[dict[str, Any]]]) -> None:
    url, waba_id, _, _ = sim
    httpx.put(f"{url}/_sim/wabas/{waba_id}/review", json={"enabled": False}).raise_for_status()
    created = httpx.post(f"{url}/v25.0/{waba_id}/message_templates", headers={"Authorization": "Bearer tok"}, json={
        "name": "before_review", "category": "UTILITY", "language": "en_US",
        "components": [{"type": "BODY", "text": "Your order {{1}} ships today"}]}).json()
    assert created["status"] == "PENDING"
    httpx.put(f"{url}/_sim/wabas/{waba_id}/review", json={"delay_s": 0.05, "status": "APPROVED"}).raise_for_status()
    deadline = time.time() + 10
    events: list[dict[str, Any]] = []
    while time.time() < deadline and not events:
        events = [c["value"] for b in list(received[1]) for c in b["entry"][0]["changes"]
                  if c["field"] == "message_template_status_update"
                  and c["value"]["message_template_name"] == "before_review"]
        time.sleep(0.05)
    assert [e["event"] for e in events] == ["APPROVED"]
    # Switching it on again reviews nothing twice.
    httpx.put(f"{url}/_sim/wabas/{waba_id}/review", json={"delay_s": 0.05, "status": "REJECTED"}).raise_for_status()
    time.sleep(0.5)
    assert len([c for b in list(received[1]) for c in b["entry"][0]["changes"]
                if c["field"] == "message_template_status_update"
                and c["value"]["message_template_name"] == "before_review"]) == 1
    listed = httpx.get(f"{url}/v25.0/{waba_id}/message_templates", headers={"Authorization": "Bearer tok"},
                       params={"limit": 1000}).json()["data"]
    assert [t["status"] for t in listed if t["name"] == "before_review"] == ["APPROVED"]


def test_the_standalone_simulator_reviews_the_demo_templates_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import meta.simulator.__main__ as entry

    started: list[SimulatorState] = []
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **_: started.append(app.state.sim))
    entry.main(["--seed", "demo"])
    entry.main(["--seed", "demo", "--review-delay", "1.5"])
    entry.main(["--seed", "demo", "--no-review"])
    plans = [state.review_plan(next(iter(state.wabas))) for state in started]
    assert [(p.enabled, p.delay_s) for p in plans[:2]] == [(True, 5.0), (True, 1.5)]
    assert not plans[2].enabled
