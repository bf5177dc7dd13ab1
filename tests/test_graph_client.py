"""GraphClient against the Meta simulator served over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
import pickle
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.background_server import BackgroundServer, free_port
from meta.graph_client import GraphAPIError, GraphClient
from meta.simulator import SimulatorState, create_simulator_app

T = TypeVar("T")
API = "v25.0"


class FakeClock:
    """Lets tests age the 24-hour window and the one-second throughput window."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    url: str
    state: SimulatorState
    clock: FakeClock

    @property
    def graph_url(self) -> str:
        return f"{self.url}/{API}"


@dataclass
class Tenant:
    waba_id: str
    token: str
    number_ids: list[str]


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    clock = FakeClock()
    # No pair limit here: these tests are about throughput and the window, not repeated sends to one customer.
    state = SimulatorState(clock=clock, pair_interval_s=0)
    with BackgroundServer(create_simulator_app(state, API)) as server:
        yield Sim(server.url, state, clock)


@pytest.fixture
def tenant(sim: Sim) -> Tenant:
    """A fresh WABA with three numbers, so tests sharing the server do not interfere."""
    return make_tenant(sim, 3)


def make_tenant(sim: Sim, numbers: int) -> Tenant:
    waba_id = sim.state.new_id()
    token = "EAA" + secrets.token_urlsafe(24)
    specs = [(sim.state.new_id(), f"+1 555 {i:07d}", f"Biz {i}") for i in range(numbers)]
    sim.state.add_waba(waba_id, f"WABA {waba_id}", token, "secret", specs)
    return Tenant(waba_id, token, [s[0] for s in specs])


def run(make: Callable[[GraphClient], Awaitable[T]], base_url: str, **kwargs: Any) -> T:
    async def main() -> T:
        async with GraphClient(base_url, timeout_s=5.0, **kwargs) as client:
            return await make(client)
    return asyncio.run(main())


def graph_error(make: Callable[[GraphClient], Awaitable[Any]], base_url: str) -> GraphAPIError:
    with pytest.raises(GraphAPIError) as info:
        run(make, base_url)
    return info.value


def text(to: str, body: str = "hello") -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"body": body}}


# ---- WABA and auth -------------------------------------------------------------------------------


def test_get_waba_returns_the_requested_fields(sim: Sim, tenant: Tenant) -> None:
    waba = run(lambda c: c.get_waba(tenant.waba_id, tenant.token), sim.graph_url)
    assert waba["id"] == tenant.waba_id
    assert waba["name"] == f"WABA {tenant.waba_id}"
    assert waba["currency"] == "USD"
    assert set(waba) == {"id", "name", "currency", "timezone_id", "message_template_namespace"}
    assert waba["message_template_namespace"]


def test_bad_token_is_error_190_with_status_401(sim: Sim, tenant: Tenant) -> None:
    err = graph_error(lambda c: c.get_waba(tenant.waba_id, "not-a-token"), sim.graph_url)
    assert (err.status_code, err.code, err.type) == (401, 190, "OAuthException")
    assert "Invalid OAuth access token" in err.message
    assert err.fbtrace_id
    assert err.is_auth_error and not err.retryable


def test_revoked_token_is_rejected(sim: Sim, tenant: Tenant) -> None:
    assert run(lambda c: c.get_waba(tenant.waba_id, tenant.token), sim.graph_url)["id"] == tenant.waba_id
    sim.state.revoke_token(tenant.token)
    err = graph_error(lambda c: c.get_waba(tenant.waba_id, tenant.token), sim.graph_url)
    assert (err.status_code, err.code) == (401, 190)


def test_unknown_waba_is_error_100_subcode_33(sim: Sim, tenant: Tenant) -> None:
    err = graph_error(lambda c: c.get_waba("999999999", tenant.token), sim.graph_url)
    assert (err.status_code, err.code, err.error_subcode) == (400, 100, 33)
    assert err.type == "GraphMethodException"
    assert "Object with ID '999999999' does not exist" in err.message


def test_foreign_waba_looks_exactly_like_an_unknown_one(sim: Sim, tenant: Tenant) -> None:
    other = make_tenant(sim, 1)
    err = graph_error(lambda c: c.get_waba(other.waba_id, tenant.token), sim.graph_url)
    assert (err.status_code, err.code, err.error_subcode) == (400, 100, 33)
    # Nor can one tenant's token send from another tenant's number.
    sim.state.record_inbound(other.number_ids[0], "15550001111")
    err = graph_error(lambda c: c.send_message(other.number_ids[0], tenant.token, text("15550001111")),
                      sim.graph_url)
    assert (err.code, err.error_subcode) == (100, 33)
    assert all(m.phone_number_id != other.number_ids[0] for m in sim.state.sent_messages)


def test_system_user_token_reaches_every_granted_waba(sim: Sim) -> None:
    first, second = make_tenant(sim, 1), make_tenant(sim, 1)
    system_token = "EAAsystem" + secrets.token_hex(8)
    sim.state.grant_token(system_token, first.waba_id, second.waba_id)

    async def both(c: GraphClient) -> list[str]:
        return [(await c.get_waba(w, system_token))["id"] for w in (first.waba_id, second.waba_id)]

    assert run(both, sim.graph_url) == [first.waba_id, second.waba_id]


def test_tokens_never_appear_in_errors_or_logs(sim: Sim, tenant: Tenant,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_token = "EAAleak" + secrets.token_hex(12)
    err = graph_error(lambda c: c.get_waba(tenant.waba_id, secret_token), sim.graph_url)
    assert secret_token not in str(err)
    unreachable = f"http://127.0.0.1:{free_port()}/{API}"
    err = graph_error(lambda c: c.get_waba(tenant.waba_id, secret_token), unreachable)
    assert secret_token not in str(err)
    assert secret_token not in caplog.text


# ---- paging --------------------------------------------------------------------------------------


def test_phone_numbers_are_collected_across_pages_in_order(sim: Sim) -> None:
    big = make_tenant(sim, 60)
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            graph = GraphClient(sim.graph_url, timeout_s=5.0, client=http)
            return await graph.list_phone_numbers(big.waba_id, big.token)

    numbers = asyncio.run(main())
    assert [n["id"] for n in numbers] == big.number_ids
    assert numbers[0] == {"id": big.number_ids[0], "display_phone_number": "+1 555 0000000",
                          "verified_name": "Biz 0", "quality_rating": "GREEN"}
    # Default page size 25: 25 + 25 + 10, every page authenticated by header, never by URL.
    assert len(requests) == 3
    assert all(r.headers["authorization"] == f"Bearer {big.token}" for r in requests)
    assert all("access_token" not in str(r.url) for r in requests)
    assert "after=" in str(requests[1].url) and "after=" in str(requests[2].url)


def test_list_phone_numbers_of_an_empty_waba(sim: Sim) -> None:
    empty = make_tenant(sim, 0)
    assert run(lambda c: c.list_phone_numbers(empty.waba_id, empty.token), sim.graph_url) == []


def test_paging_never_follows_next_to_another_host() -> None:
    """A `next` link to a foreign host must not receive the token: the client uses the cursor instead."""
    seen: list[dict[str, str]] = []
    app = FastAPI()

    @app.get("/v25.0/{waba_id}/phone_numbers")
    async def numbers(waba_id: str, request: Request) -> dict[str, Any]:
        seen.append(dict(request.query_params))
        if "after" not in request.query_params:
            return {"data": [{"id": "1"}], "paging": {"cursors": {"before": "a", "after": "c1"},
                                                       "next": "http://evil.invalid/v25.0/x?after=c1"}}
        return {"data": [{"id": "2"}], "paging": {"cursors": {"before": "c1", "after": "c2"}}}

    with BackgroundServer(app) as server:
        numbers = run(lambda c: c.list_phone_numbers("42", "tok"), f"{server.url}/v25.0")
    assert [n["id"] for n in numbers] == ["1", "2"]
    assert seen[1]["after"] == "c1"
    assert seen[1]["fields"] == seen[0]["fields"]


# ---- messages ------------------------------------------------------------------------------------


def test_send_message_inside_the_24h_window(sim: Sim, tenant: Tenant) -> None:
    number, customer = tenant.number_ids[0], "351912345678"
    sim.state.record_inbound(number, customer, at=sim.clock() - (24 * 3600 - 60))
    result = run(lambda c: c.send_message(number, tenant.token, text(customer, "olá")), sim.graph_url)
    assert result["messaging_product"] == "whatsapp"
    assert result["contacts"] == [{"input": customer, "wa_id": customer}]
    wamid = result["messages"][0]["id"]
    assert wamid.startswith("wamid.")
    sent = [m for m in sim.state.sent_messages if m.id == wamid]
    assert len(sent) == 1
    assert (sent[0].phone_number_id, sent[0].to, sent[0].type) == (number, customer, "text")
    assert sent[0].payload["text"] == {"body": "olá"}


def test_send_message_outside_the_window_is_131047(sim: Sim, tenant: Tenant) -> None:
    number = tenant.number_ids[0]
    sim.state.record_inbound(number, "351900000001", at=sim.clock() - (24 * 3600 + 1))
    for customer in ("351900000001", "351900000002"):  # window expired / customer never wrote
        err = graph_error(lambda c, to=customer: c.send_message(number, tenant.token, text(to)),
                          sim.graph_url)
        assert (err.status_code, err.code, err.type) == (400, 131047, "OAuthException")
        assert err.message == "Re-engagement message"
        assert err.details and "24 hours" in err.details
    assert not [m for m in sim.state.sent_messages if m.phone_number_id == number]


def test_window_is_per_business_number(sim: Sim, tenant: Tenant) -> None:
    first, second = tenant.number_ids[:2]
    sim.state.record_inbound(first, "351900000003")
    run(lambda c: c.send_message(first, tenant.token, text("351900000003")), sim.graph_url)
    err = graph_error(lambda c: c.send_message(second, tenant.token, text("351900000003")), sim.graph_url)
    assert err.code == 131047


def test_throughput_limit_is_130429_and_recovers_after_a_second(sim: Sim, tenant: Tenant) -> None:
    number, customer = tenant.number_ids[0], "351900000004"
    sim.state.record_inbound(number, customer)
    sim.state.set_throughput(number, 5)

    async def burst(c: GraphClient) -> tuple[int, list[GraphAPIError]]:
        ok, errors = 0, []
        for i in range(8):
            try:
                await c.send_message(number, tenant.token, text(customer, f"m{i}"))
                ok += 1
            except GraphAPIError as exc:
                errors.append(exc)
        return ok, errors

    ok, errors = run(burst, sim.graph_url)
    assert ok == 5 and len(errors) == 3
    assert all((e.code, e.status_code, e.message) == (130429, 400, "Rate limit hit") for e in errors)
    assert errors[0].retryable
    # Another number of the same WABA has its own budget.
    other = tenant.number_ids[1]
    sim.state.record_inbound(other, customer)
    run(lambda c: c.send_message(other, tenant.token, text(customer)), sim.graph_url)
    sim.clock.advance(1.0)
    assert run(lambda c: c.send_message(number, tenant.token, text(customer)), sim.graph_url)["messages"]


def test_invalid_message_payload_is_error_100(sim: Sim, tenant: Tenant) -> None:
    number = tenant.number_ids[0]
    bad = {"to": "351900000005", "type": "text", "text": {"body": "x"}}  # no messaging_product
    err = graph_error(lambda c: c.send_message(number, tenant.token, bad), sim.graph_url)
    assert (err.status_code, err.code, err.type) == (400, 100, "OAuthException")
    assert "messaging_product" in err.message


# ---- templates -----------------------------------------------------------------------------------


def template(name: str = "order_update", category: str = "UTILITY", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name, "category": category, "language": "en_US",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Order update"},
            {"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped.",
             "example": {"body_text": [["Ana", "A-1"]]}},
            {"type": "FOOTER", "text": "Reply STOP to opt out"},
        ],
    }
    body.update(extra)
    return body


@pytest.mark.parametrize(("override", "needle"), [
    ({"name": "Order Update"}, "lowercase"),
    ({"name": "order-update"}, "lowercase"),
    ({"category": "PROMO"}, "category"),
    ({"language": "english"}, "language"),
    ({"components": [{"type": "HEADER", "format": "TEXT", "text": "x"}]}, "exactly one BODY"),
    ({"components": [{"type": "BODY", "text": "a"}, {"type": "BODY", "text": "b"}]}, "exactly one BODY"),
    ({"components": [{"type": "BODY", "text": "a"}, {"type": "FOOTER", "text": "f"},
                     {"type": "FOOTER", "text": "g"}]}, "at most one FOOTER"),
    ({"components": [{"type": "BODY", "text": ""}]}, "BODY component requires"),
    ({"components": [{"type": "BODY", "text": "a"}, {"type": "SIDEBAR"}]}, "Invalid component"),
])
def test_template_validation(sim: Sim, tenant: Tenant, override: dict[str, Any], needle: str) -> None:
    err = graph_error(lambda c: c.create_template(tenant.waba_id, tenant.token, template(**override)),
                      sim.graph_url)
    assert (err.status_code, err.code, err.type) == (400, 100, "OAuthException")
    assert needle in err.message


def test_template_review_flow(sim: Sim, tenant: Tenant) -> None:
    number, customer = tenant.number_ids[0], "351900000006"
    created = run(lambda c: c.create_template(tenant.waba_id, tenant.token, template()), sim.graph_url)
    assert created["status"] == "PENDING" and created["category"] == "UTILITY" and created["id"]
    send = {"messaging_product": "whatsapp", "to": customer, "type": "template",
            "template": {"name": "order_update", "language": {"code": "en_US"},
                         "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                                                        {"type": "text", "text": "A-1"}]}]}}

    # Not approved yet: Meta refuses it (no inbound needed for templates, so only the template matters).
    err = graph_error(lambda c: c.send_message(number, tenant.token, send), sim.graph_url)
    assert err.code == 132001 and err.message == "Template name does not exist in the translation"

    # Review through the control API, as a demo would.
    response = httpx.post(f"{sim.url}/_sim/templates/{created['id']}/review", json={"status": "APPROVED"})
    assert response.status_code == 200 and response.json()["template"]["status"] == "APPROVED"
    result = run(lambda c: c.send_message(number, tenant.token, send), sim.graph_url)
    assert result["messages"][0]["id"].startswith("wamid.")

    # Same name in another language is a different translation, still missing.
    other_language = {**send, "template": {**send["template"], "language": {"code": "pt_BR"}}}
    assert graph_error(lambda c: c.send_message(number, tenant.token, other_language), sim.graph_url).code \
        == 132001

    # A duplicate name+language is refused.
    assert graph_error(lambda c: c.create_template(tenant.waba_id, tenant.token, template()),
                       sim.graph_url).code == 100

    promo = template("promo_blast", "MARKETING")
    rejected = run(lambda c: c.create_template(tenant.waba_id, tenant.token, promo), sim.graph_url)
    sim.state.review_template(rejected["id"], "REJECTED", "PROMOTIONAL")
    templates = run(lambda c: c.list_templates(tenant.waba_id, tenant.token), sim.graph_url)
    listed = {t["name"]: t for t in templates}
    assert listed["order_update"]["status"] == "APPROVED"
    assert listed["promo_blast"]["status"] == "REJECTED"
    assert listed["promo_blast"]["rejected_reason"] == "PROMOTIONAL"
    assert listed["order_update"]["components"][1]["type"] == "BODY"


def test_list_templates_follows_paging(sim: Sim, tenant: Tenant) -> None:
    async def create_many(c: GraphClient) -> list[dict[str, Any]]:
        for i in range(30):
            await c.create_template(tenant.waba_id, tenant.token, template(f"tpl_{i:02d}"))
        return await c.list_templates(tenant.waba_id, tenant.token)

    templates = run(create_many, sim.graph_url)
    assert [t["name"] for t in templates] == [f"tpl_{i:02d}" for i in range(30)]


# ---- transport failures --------------------------------------------------------------------------


def test_unreachable_server_is_502_without_code() -> None:
    base = f"http://127.0.0.1:{free_port()}/{API}"  # nothing listens there
    err = graph_error(lambda c: c.get_waba("1", "tok"), base)
    assert err.status_code == 502 and err.code is None
    assert "unreachable" in err.message
    assert err.retryable


def test_non_json_answers_become_graph_errors() -> None:
    app = FastAPI()

    @app.get("/v25.0/html")
    async def html() -> PlainTextResponse:
        return PlainTextResponse("<html>Bad gateway</html>", status_code=503)

    @app.get("/v25.0/garbage")
    async def garbage() -> PlainTextResponse:
        return PlainTextResponse("not json", status_code=200)

    @app.get("/v25.0/list")
    async def a_list() -> JSONResponse:
        return JSONResponse([1, 2, 3])

    with BackgroundServer(app) as server:
        base = f"{server.url}/v25.0"
        err = graph_error(lambda c: c.get_waba("html", "tok"), base)
        assert (err.status_code, err.code) == (503, None) and "without a Graph error body" in err.message
        err = graph_error(lambda c: c.get_waba("garbage", "tok"), base)
        assert (err.status_code, err.code) == (502, None) and "non-JSON" in err.message
        err = graph_error(lambda c: c.get_waba("list", "tok"), base)
        assert (err.status_code, err.code) == (502, None)


def test_graph_error_survives_pickling(sim: Sim, tenant: Tenant) -> None:
    err = graph_error(lambda c: c.get_waba("12345", tenant.token), sim.graph_url)
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, GraphAPIError)
    assert (copy.status_code, copy.code, copy.error_subcode, copy.type, copy.fbtrace_id, copy.message) == \
        (err.status_code, err.code, err.error_subcode, err.type, err.fbtrace_id, err.message)


def test_ids_cannot_inject_path_segments(sim: Sim, tenant: Tenant) -> None:
    err = graph_error(lambda c: c.get_waba(f"{tenant.waba_id}/phone_numbers", tenant.token), sim.graph_url)
    assert err.code == 100  # the slash was quoted: one (unknown) object id, not another edge


def _closing_once_server(answers: int) -> tuple[socket.socket, list[bytes]]:
    """A server that closes its first connection without an answer (a kept-alive connection dropped), then
    answers `answers` requests with a Graph object, one per connection; the requests it saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        for index in range(answers + 1):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                seen.append(connection.recv(65536))
                if index > 0:
                    body = b'{"id": "1", "name": "Acme"}'
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def test_a_read_whose_connection_closed_without_an_answer_is_asked_again_once_and_a_send_is_not() -> None:
    listener, seen = _closing_once_server(answers=1)
    with listener:
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/{API}"

        async def read() -> dict[str, Any]:
            async with GraphClient(base) as client:
                return await client.get_waba("1", "tok")

        assert asyncio.run(read())["id"] == "1"
        assert len(seen) == 2 and all(request.startswith(b"GET ") for request in seen)

    listener, seen = _closing_once_server(answers=1)
    with listener:
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/{API}"
        err = graph_error(lambda c: c.send_message("123", "tok", {"messaging_product": "whatsapp", "to": "1",
                                                                  "type": "text", "text": {"body": "hi"}}), base)
        assert err.status_code == 502 and "unreachable" in err.message
        assert len(seen) == 1  # the send was not repeated

