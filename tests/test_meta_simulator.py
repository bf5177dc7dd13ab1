"""The Meta simulator: Graph HTTP surface, /_sim control API, webhook payloads and signed delivery."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from gateway.background_server import BackgroundServer, free_port
from meta.signature import HEADER, verify
from meta.simulator import SimulatorState, WebhookSender, create_simulator_app, payloads, verify_subscription

API = "v25.0"
APP_SECRET = "app-secret-for-tests"
VERIFY_TOKEN = "verify-me"
WAMID = re.compile(r"^wamid\.[A-Za-z0-9+/=]{20,}$")


# ---- a tiny webhook receiver that checks signatures on the raw body -----------------------------------


@dataclass
class Receiver:
    url: str
    accepted: list[dict[str, Any]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    rejected: int = 0


def receiver_app(receiver: Receiver) -> FastAPI:
    app = FastAPI()

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        raw = await request.body()
        if not verify(raw, request.headers.get(HEADER, ""), APP_SECRET):
            receiver.rejected += 1
            return Response(status_code=401)
        assert request.headers["content-type"] == "application/json"
        receiver.raw_bodies.append(raw)
        receiver.accepted.append(json.loads(raw))
        return Response(status_code=200)

    @app.get("/webhook")
    async def handshake(request: Request) -> Response:
        q = request.query_params
        if q.get("hub.mode") == "subscribe" and q.get("hub.verify_token") == VERIFY_TOKEN:
            return PlainTextResponse(q.get("hub.challenge", ""))
        return Response(status_code=403)

    return app


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")
    with BackgroundServer(receiver_app(rec)) as server:
        rec.url = f"{server.url}/webhook"
        yield rec


@dataclass
class Sim:
    url: str
    state: SimulatorState

    def graph(self, path: str) -> str:
        return f"{self.url}/{API}{path}"


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    state = SimulatorState()
    with BackgroundServer(create_simulator_app(state, API)) as server:
        yield Sim(server.url, state)


def add_waba(sim: Sim, numbers: int = 2, callback_url: str | None = None) -> dict[str, Any]:
    """Through the control API, exactly as a demo script would."""
    body: dict[str, Any] = {"name": "Acme Support", "app_secret": APP_SECRET,
                            "numbers": [{"display_phone_number": f"+1 555 010 {i:04d}",
                                         "verified_name": "Acme"} for i in range(numbers)]}
    if callback_url:
        body["callback_url"] = callback_url
    response = httpx.post(f"{sim.url}/_sim/wabas", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- Graph HTTP surface --------------------------------------------------------------------------


def test_control_api_creates_a_usable_waba(sim: Sim) -> None:
    waba = add_waba(sim)
    assert waba["access_token"] and waba["waba_id"] and len(waba["numbers"]) == 2
    got = httpx.get(sim.graph(f"/{waba['waba_id']}"), headers=bearer(waba["access_token"]))
    assert got.status_code == 200
    assert got.json()["name"] == "Acme Support"
    # A phone number node is readable by id too.
    number = waba["numbers"][0]
    got = httpx.get(sim.graph(f"/{number['id']}"), headers=bearer(waba["access_token"]))
    assert got.json()["display_phone_number"] == "+1 555 010 0000"
    duplicate = httpx.post(f"{sim.url}/_sim/wabas", json={"name": "x", "waba_id": waba["waba_id"]})
    assert duplicate.status_code == 409


def test_fields_parameter_filters_and_rejects_unknown_fields(sim: Sim) -> None:
    waba = add_waba(sim, 0)
    url, headers = sim.graph(f"/{waba['waba_id']}"), bearer(waba["access_token"])
    assert httpx.get(url, params={"fields": "name"}, headers=headers).json() == \
        {"id": waba["waba_id"], "name": "Acme Support"}
    bad = httpx.get(url, params={"fields": "name,owner_secret"}, headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 100


def test_auth_errors_have_metas_shape(sim: Sim) -> None:
    waba = add_waba(sim, 0)
    url = sim.graph(f"/{waba['waba_id']}")
    missing = httpx.get(url)
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert error["code"] == 190 and error["type"] == "OAuthException"
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert error["fbtrace_id"]
    assert missing.headers["www-authenticate"].startswith("OAuth")
    # Two errors get different trace ids.
    assert httpx.get(url).json()["error"]["fbtrace_id"] != error["fbtrace_id"]
    # Graph also accepts the token as a query parameter.
    assert httpx.get(url, params={"access_token": waba["access_token"]}).status_code == 200
    unknown = httpx.get(sim.graph("/123"), headers=bearer(waba["access_token"]))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["type"] == "GraphMethodException"
    assert unknown.json()["error"]["error_subcode"] == 33
    edge = httpx.get(sim.graph(f"/{waba['waba_id']}/subscribed_things"), headers=bearer(waba["access_token"]))
    assert edge.status_code == 400 and "Unknown path components" in edge.json()["error"]["message"]


def test_token_grant_and_revoke_through_control_api(sim: Sim) -> None:
    a, b = add_waba(sim, 0), add_waba(sim, 0)
    token = "EAAsystemuser"
    grant = {"token": token, "waba_ids": [a["waba_id"], b["waba_id"]]}
    assert httpx.post(f"{sim.url}/_sim/tokens", json=grant).status_code == 200
    for waba in (a, b):
        assert httpx.get(sim.graph(f"/{waba['waba_id']}"), headers=bearer(token)).status_code == 200
    assert httpx.post(f"{sim.url}/_sim/tokens/revoke", json={"token": token}).status_code == 200
    assert httpx.get(sim.graph(f"/{a['waba_id']}"), headers=bearer(token)).status_code == 401
    # Revoking the system-user token does not touch the WABA's own token.
    assert httpx.get(sim.graph(f"/{a['waba_id']}"), headers=bearer(a["access_token"])).status_code == 200


def test_phone_number_paging_shape(sim: Sim) -> None:
    waba = add_waba(sim, 7)
    url, headers = sim.graph(f"/{waba['waba_id']}/phone_numbers"), bearer(waba["access_token"])
    first = httpx.get(url, params={"limit": 3}, headers=headers).json()
    assert [n["id"] for n in first["data"]] == [n["id"] for n in waba["numbers"][:3]]
    assert set(first["data"][0]) >= {"id", "display_phone_number", "verified_name", "quality_rating",
                                     "code_verification_status"}
    assert set(first["paging"]["cursors"]) == {"before", "after"}
    assert first["paging"]["next"].startswith(sim.graph(f"/{waba['waba_id']}/phone_numbers?"))
    assert "previous" not in first["paging"]
    ids: list[str] = [n["id"] for n in first["data"]]
    page = first
    while "next" in page["paging"]:
        page = httpx.get(page["paging"]["next"], headers=headers).json()
        ids += [n["id"] for n in page["data"]]
        assert "previous" in page["paging"]
    assert ids == [n["id"] for n in waba["numbers"]]
    assert len(page["data"]) == 1  # 3 + 3 + 1
    # Default page size is 25: everything on one page, no `next`.
    whole = httpx.get(url, headers=headers).json()
    assert len(whole["data"]) == 7 and "next" not in whole["paging"]
    # The `fields` parameter survives into `next` links.
    narrow = httpx.get(url, params={"limit": 2, "fields": "id"}, headers=headers).json()
    assert narrow["data"][0] == {"id": waba["numbers"][0]["id"]}
    assert httpx.get(narrow["paging"]["next"], headers=headers).json()["data"][0] == \
        {"id": waba["numbers"][2]["id"]}
    for bad in ({"limit": 0}, {"limit": "lots"}, {"after": "%%%"}):
        response = httpx.get(url, params=bad, headers=headers)
        assert response.status_code == 400 and response.json()["error"]["code"] == 100


def test_send_message_validation_and_response_shape(sim: Sim) -> None:
    waba = add_waba(sim, 1)
    number = waba["numbers"][0]["id"]
    url, headers = sim.graph(f"/{number}/messages"), bearer(waba["access_token"])
    sim.state.record_inbound(number, "447700900123")
    ok = httpx.post(url, headers=headers, json={"messaging_product": "whatsapp", "to": "+447700900123",
                                                "type": "image", "image": {"link": "https://x/y.jpg"}})
    assert ok.status_code == 200
    body = ok.json()
    assert body["contacts"] == [{"input": "+447700900123", "wa_id": "447700900123"}]
    assert WAMID.match(body["messages"][0]["id"])
    invalid: list[tuple[Any, str]] = [
        ({"to": "447700900123", "type": "text", "text": {"body": "x"}}, "messaging_product"),
        ({"messaging_product": "whatsapp", "to": "447700900123", "type": "fax", "fax": {}}, "type"),
        ({"messaging_product": "whatsapp", "to": "nobody", "type": "text", "text": {"body": "x"}}, "to"),
        ({"messaging_product": "whatsapp", "to": "447700900123", "type": "text", "text": {}}, "body"),
        ({"messaging_product": "whatsapp", "to": "447700900123", "type": "image", "image": {}}, "id or link"),
    ]
    for payload, needle in invalid:
        response = httpx.post(url, headers=headers, json=payload)
        assert response.status_code == 400, payload
        assert response.json()["error"]["code"] == 100 and needle in response.json()["error"]["message"]
    garbage = httpx.post(url, headers={**headers, "Content-Type": "application/json"}, content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == 100


def test_sent_messages_control_endpoints(sim: Sim) -> None:
    waba = add_waba(sim, 2)
    first, second = (n["id"] for n in waba["numbers"])
    for number in (first, second):
        sim.state.record_inbound(number, "15551230000")
        response = httpx.post(sim.graph(f"/{number}/messages"), headers=bearer(waba["access_token"]),
                              json={"messaging_product": "whatsapp", "to": "15551230000", "type": "text",
                                    "text": {"body": f"from {number}"}})
        assert response.status_code == 200
    listed = httpx.get(f"{sim.url}/_sim/sent_messages", params={"phone_number_id": first}).json()["data"]
    assert len(listed) == 1 and listed[0]["payload"]["text"]["body"] == f"from {first}"
    assert listed[0]["to"] == "15551230000" and listed[0]["type"] == "text"
    assert httpx.post(f"{sim.url}/_sim/numbers/{first}/throughput",
                      json={"messages_per_second": 0.5}).status_code == 200
    assert httpx.post(f"{sim.url}/_sim/numbers/nope/throughput",
                      json={"messages_per_second": 1}).status_code == 404


# ---- control API deliveries (signed webhooks to a receiver) -------------------------------------


def test_inbound_control_endpoint_delivers_and_opens_the_window(sim: Sim, receiver: Receiver) -> None:
    waba = add_waba(sim, 1, callback_url=receiver.url)
    number = waba["numbers"][0]
    send = {"messaging_product": "whatsapp", "to": "5511987654321", "type": "text", "text": {"body": "hi"}}
    url, headers = sim.graph(f"/{number['id']}/messages"), bearer(waba["access_token"])
    assert httpx.post(url, headers=headers, json=send).json()["error"]["code"] == 131047

    before = len(receiver.accepted)
    result = httpx.post(f"{sim.url}/_sim/inbound", json={
        "phone_number_id": number["id"], "from": "5511987654321", "name": "Maria",
        "type": "text", "fields": {"body": "preciso de ajuda"}}).json()
    assert result["delivered"] is True and result["webhook_status"] == 200
    assert len(receiver.accepted) == before + 1
    delivered = receiver.accepted[-1]
    value = delivered["entry"][0]["changes"][0]["value"]
    assert delivered["entry"][0]["id"] == waba["waba_id"]
    assert value["metadata"] == {"display_phone_number": number["display_phone_number"],
                                 "phone_number_id": number["id"]}
    assert value["contacts"] == [{"profile": {"name": "Maria"}, "wa_id": "5511987654321"}]
    assert value["messages"][0]["text"] == {"body": "preciso de ajuda"}
    assert value["messages"][0]["id"] == result["message_id"]

    sent = httpx.post(url, headers=headers, json=send)
    assert sent.status_code == 200
    status = httpx.post(f"{sim.url}/_sim/statuses", json={"message_id": sent.json()["messages"][0]["id"],
                                                          "status": "delivered"}).json()
    assert status["delivered"] is True
    st = receiver.accepted[-1]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert st["status"] == "delivered" and st["recipient_id"] == "5511987654321"
    assert st["pricing"]["category"] == "service"

    # An inbound backdated past 24 h does not open the window.
    stale = httpx.post(f"{sim.url}/_sim/inbound", json={
        "phone_number_id": number["id"], "from": "5511000000000", "deliver": False, "age_s": 90_000}).json()
    assert stale["delivered"] is False
    late = httpx.post(url, headers=headers, json={**send, "to": "5511000000000"})
    assert late.json()["error"]["code"] == 131047


def test_review_control_endpoint_delivers_template_status_update(sim: Sim, receiver: Receiver) -> None:
    waba = add_waba(sim, 0, callback_url=receiver.url)
    spec = {"name": "welcome", "category": "MARKETING", "language": "pt_BR",
            "components": [{"type": "BODY", "text": "Olá!"}]}
    created = httpx.post(sim.graph(f"/{waba['waba_id']}/message_templates"),
                         headers=bearer(waba["access_token"]), json=spec).json()
    assert created["status"] == "PENDING"
    result = httpx.post(f"{sim.url}/_sim/templates/{created['id']}/review",
                        json={"status": "REJECTED", "reason": "INVALID_FORMAT"}).json()
    assert result["delivered"] is True
    body = receiver.accepted[-1]
    change = body["entry"][0]["changes"][0]
    assert change["field"] == "message_template_status_update"
    assert change["value"] == {"event": "REJECTED", "message_template_id": int(created["id"]),
                               "message_template_name": "welcome", "message_template_language": "pt_BR",
                               "reason": "INVALID_FORMAT"}
    assert isinstance(body["entry"][0]["time"], int)
    assert httpx.post(f"{sim.url}/_sim/templates/404/review", json={"status": "APPROVED"}).status_code == 404
    assert httpx.post(f"{sim.url}/_sim/templates/{created['id']}/review",
                      json={"status": "MAYBE"}).status_code == 422


def test_delivery_failure_is_reported_not_raised(sim: Sim) -> None:
    waba = add_waba(sim, 1, callback_url=f"http://127.0.0.1:{free_port()}/webhook")
    result = httpx.post(f"{sim.url}/_sim/inbound", json={"phone_number_id": waba["numbers"][0]["id"],
                                                         "from": "15550009999"})
    assert result.status_code == 200
    assert result.json()["delivered"] is False and "ConnectError" in result.json()["webhook_error"]


def test_status_webhooks_no_receiver_took_in_their_retry_time_are_recorded_as_given_up(sim: Sim) -> None:
    """A status webhook posted until its plan's retry time ran out without a 200 is kept with its attempts and
    the last answer: a check can tell a receiver that lost a status from one that never got it."""
    waba = add_waba(sim, 1, callback_url=f"http://127.0.0.1:{free_port()}/webhook")
    number = waba["numbers"][0]["id"]
    plan = httpx.put(f"{sim.url}/_sim/numbers/{number}/delivery",
                     json={"enabled": True, "read_delay_s": None, "retry_for_s": 0.5})
    assert plan.status_code == 200, plan.text
    sim.state.record_inbound(number, "15550008888")
    sent = httpx.post(sim.graph(f"/{number}/messages"), headers=bearer(waba["access_token"]),
                      json={"messaging_product": "whatsapp", "to": "15550008888", "type": "text",
                            "text": {"body": "nobody is listening"}})
    wamid = sent.json()["messages"][0]["id"]
    deadline = time.monotonic() + 10
    while len([g for g in sim.state.statuses_given_up if g.wamid == wamid]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    given_up = sorted((g for g in sim.state.statuses_given_up if g.wamid == wamid), key=lambda g: g.status)
    assert [g.status for g in given_up] == ["delivered", "sent"]
    assert all(g.attempts >= 2 and g.last_answer == "ConnectError" for g in given_up)


# ---- payload builders ----------------------------------------------------------------------------

WABA_ID, PNID, DISPLAY, CUSTOMER = "102290129340398", "106540352242922", "15550783881", "16315551181"


def only_message(body: dict[str, Any]) -> dict[str, Any]:
    assert body["object"] == "whatsapp_business_account"
    assert len(body["entry"]) == 1 and body["entry"][0]["id"] == WABA_ID
    change = body["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {"display_phone_number": DISPLAY, "phone_number_id": PNID}
    assert value["contacts"] == [{"profile": {"name": "Kerry"}, "wa_id": CUSTOMER}]
    [msg] = value["messages"]
    assert msg["from"] == CUSTOMER
    assert WAMID.match(msg["id"])
    assert isinstance(msg["timestamp"], str) and msg["timestamp"].isdigit()
    return msg


def inbound(type_: str, **fields: Any) -> dict[str, Any]:
    return only_message(payloads.inbound_message(WABA_ID, PNID, DISPLAY, CUSTOMER, "Kerry", type_, **fields))


def test_text_payload() -> None:
    msg = inbound("text", body="Hello there", timestamp=1_700_000_123)
    assert msg["type"] == "text" and msg["text"] == {"body": "Hello there"}
    assert msg["timestamp"] == "1700000123"
    assert "context" not in msg and "referral" not in msg


@pytest.mark.parametrize(("type_", "fields", "mime"), [
    ("image", {"caption": "receipt"}, "image/jpeg"),
    ("video", {"caption": "unboxing"}, "video/mp4"),
    ("document", {"filename": "invoice.pdf", "caption": "Invoice"}, "application/pdf"),
    ("sticker", {}, "image/webp"),
    ("audio", {}, "audio/ogg; codecs=opus"),
])
def test_media_payloads(type_: str, fields: dict[str, Any], mime: str) -> None:
    msg = inbound(type_, **fields)
    media = msg[type_]
    assert msg["type"] == type_
    assert media["mime_type"] == mime and media["id"].isdigit() and media["sha256"]
    for key, value in fields.items():
        assert media[key] == value


def test_audio_voice_flag_and_sticker_animation() -> None:
    assert inbound("audio", voice=True)["audio"]["voice"] is True
    assert inbound("audio", voice=False)["audio"]["voice"] is False
    assert inbound("sticker", animated=True)["sticker"]["animated"] is True


def test_location_and_contacts_payloads() -> None:
    loc = inbound("location", latitude=-23.55, longitude=-46.63, name="Paulista", address="Av. Paulista")
    assert loc["location"] == {"latitude": -23.55, "longitude": -46.63, "name": "Paulista",
                               "address": "Av. Paulista"}
    card = payloads.contact_card("Ana Souza", "+55 11 91234 5678", email="ana@example.com", company="Acme")
    msg = inbound("contacts", cards=[card])
    [got] = msg["contacts"]
    assert got["name"]["formatted_name"] == "Ana Souza" and got["name"]["first_name"] == "Ana"
    assert got["name"]["last_name"] == "Souza"
    assert got["phones"][0] == {"phone": "+55 11 91234 5678", "type": "CELL", "wa_id": "5511912345678"}
    assert got["emails"][0]["email"] == "ana@example.com" and got["org"] == {"company": "Acme"}


def test_interactive_and_button_payloads() -> None:
    reply = payloads.reply_context(DISPLAY, "wamid.ABC")
    btn = inbound("button_reply", button_id="agent", title="Talk to agent", context=reply)
    assert btn["type"] == "interactive"
    assert btn["interactive"] == {"type": "button_reply",
                                  "button_reply": {"id": "agent", "title": "Talk to agent"}}
    assert btn["context"] == {"from": DISPLAY, "id": "wamid.ABC"}
    lst = inbound("list_reply", row_id="billing", title="Billing", description="Invoices")
    assert lst["interactive"] == {
        "type": "list_reply", "list_reply": {"id": "billing", "title": "Billing", "description": "Invoices"}}
    assert lst["context"]["id"].startswith("wamid.")  # always answers a business message
    quick = inbound("button", text="Stop promotions", payload="STOP")
    assert quick["type"] == "button" and quick["button"] == {"payload": "STOP", "text": "Stop promotions"}


def test_reaction_order_system_unsupported_payloads() -> None:
    reaction = inbound("reaction", message_id_reacted="wamid.XYZ", emoji="\u2764\ufe0f")
    assert reaction["reaction"] == {"message_id": "wamid.XYZ", "emoji": "\u2764\ufe0f"}
    removed = inbound("reaction", message_id_reacted="wamid.XYZ", emoji=None)
    assert removed["reaction"] == {"message_id": "wamid.XYZ"}
    order = inbound("order", catalog_id="777", text="for pickup",
                    items=[{"product_retailer_id": "sku-9", "quantity": 2, "item_price": 5.5,
                            "currency": "EUR"}])
    assert order["order"]["catalog_id"] == "777" and order["order"]["product_items"][0]["quantity"] == 2
    system = inbound("system", new_wa_id="16315550000")
    assert system["system"]["type"] == "user_changed_number" and system["system"]["wa_id"] == "16315550000"
    unsupported = inbound("unsupported")
    assert unsupported["type"] == "unsupported" and "unsupported" not in unsupported
    assert unsupported["errors"][0]["code"] == 131051
    assert unsupported["errors"][0]["error_data"]["details"]


def test_context_variants_and_referral() -> None:
    fwd = inbound("text", body="fw", context=payloads.forwarded_context())
    assert fwd["context"] == {"forwarded": True}
    assert inbound("text", context=payloads.forwarded_context(frequently=True))["context"] == \
        {"frequently_forwarded": True}
    product = inbound("text", body="Is this in stock?",
                      context=payloads.product_context(DISPLAY, "wamid.P", "cat-1", "sku-1"))
    assert product["context"]["referred_product"] == {"catalog_id": "cat-1", "product_retailer_id": "sku-1"}
    ad = inbound("text", body="I saw your ad", referral=payloads.ad_referral(headline="Summer sale"))
    referral = ad["referral"]
    assert referral["source_type"] == "ad" and referral["headline"] == "Summer sale"
    assert referral["media_type"] == "image" and referral["image_url"] and referral["ctwa_clid"]
    video_ad = payloads.ad_referral(media_type="video", media_url="https://x/v.mp4")
    assert video_ad["video_url"] == "https://x/v.mp4" and "image_url" not in video_ad


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown inbound message type"):
        payloads.inbound_message(WABA_ID, PNID, DISPLAY, CUSTOMER, "Kerry", "hologram")


def test_batched_messages_share_one_body() -> None:
    msgs = [payloads.text_message("111", "a"), payloads.image_message("222"),
            payloads.text_message("111", "b")]
    body = payloads.inbound_messages(WABA_ID, PNID, DISPLAY, msgs, names={"111": "Ann"})
    value = body["entry"][0]["changes"][0]["value"]
    assert value["messages"] == msgs
    assert value["contacts"] == [{"profile": {"name": "Ann"}, "wa_id": "111"},
                                 {"profile": {"name": "222"}, "wa_id": "222"}]
    assert len({m["id"] for m in msgs}) == 3  # unique ids


def test_status_payloads() -> None:
    sent = payloads.status_update(WABA_ID, PNID, DISPLAY, "wamid.S", CUSTOMER, "sent", timestamp=1_000)
    value = sent["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == PNID and "messages" not in value
    [st] = value["statuses"]
    assert st["id"] == "wamid.S" and st["status"] == "sent" and st["timestamp"] == "1000"
    assert st["recipient_id"] == CUSTOMER
    assert st["conversation"]["origin"] == {"type": "service"}
    assert st["conversation"]["expiration_timestamp"] == str(1_000 + 86_400)
    assert st["pricing"] == {"billable": False, "pricing_model": "PMP", "category": "service",
                             "type": "free_customer_service"}
    marketing = payloads.status("wamid.M", CUSTOMER, "delivered", category="marketing")
    assert marketing["pricing"]["billable"] is True
    assert "expiration_timestamp" not in marketing["conversation"]
    for plain in ("read", "played"):
        obj = payloads.status("wamid.R", CUSTOMER, plain)
        assert obj["status"] == plain and "pricing" not in obj and "errors" not in obj
    failed = payloads.status("wamid.F", CUSTOMER, "failed",
                             errors=[payloads.error_object(131047, "Re-engagement message", "24h passed")])
    assert failed["errors"][0]["code"] == 131047
    assert failed["errors"][0]["error_data"] == {"details": "24h passed"}
    batch = payloads.statuses_update(WABA_ID, PNID, DISPLAY, [marketing, failed])
    assert len(batch["entry"][0]["changes"][0]["value"]["statuses"]) == 2
    with pytest.raises(ValueError):
        payloads.status("wamid.X", CUSTOMER, "lost")


def test_template_status_payload() -> None:
    body = payloads.template_status_update(WABA_ID, "594425479261596", "order_update", "en_US", "APPROVED")
    entry = body["entry"][0]
    assert body["object"] == "whatsapp_business_account" and entry["id"] == WABA_ID
    assert entry["changes"][0]["field"] == "message_template_status_update"
    assert entry["changes"][0]["value"] == {"event": "APPROVED", "message_template_id": 594425479261596,
                                            "message_template_name": "order_update",
                                            "message_template_language": "en_US", "reason": "NONE"}


# ---- webhook sender ------------------------------------------------------------------------------


def test_webhook_sender_signs_the_exact_bytes(receiver: Receiver) -> None:
    payload = payloads.inbound_message(WABA_ID, PNID, DISPLAY, CUSTOMER, "Zoë", body="ação ✓")

    async def send() -> httpx.Response:
        async with WebhookSender(receiver.url, APP_SECRET) as sender:
            body, headers = sender.prepare(payload)
            response = await sender.send(payload)
            assert receiver.raw_bodies[-1] == body  # what was signed is what was sent
            assert verify(body, headers[HEADER], APP_SECRET)
            return response

    before = len(receiver.accepted)
    assert asyncio.run(send()).status_code == 200
    assert receiver.accepted[before] == payload
    assert WebhookSender(receiver.url, APP_SECRET).send_sync(payload).status_code == 200
    assert receiver.accepted[-1] == payload


def test_wrong_secret_is_rejected_by_the_receiver(receiver: Receiver) -> None:
    rejected = receiver.rejected
    response = WebhookSender(receiver.url, "not-the-secret").send_sync(payloads.inbound_message(
        WABA_ID, PNID, DISPLAY, CUSTOMER, "Kerry"))
    assert response.status_code == 401 and receiver.rejected == rejected + 1


def test_subscription_handshake(receiver: Receiver) -> None:
    ok = verify_subscription(receiver.url, VERIFY_TOKEN, "1158201444")
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert verify_subscription(receiver.url, "wrong", "1158201444").status_code == 403


# ---- standalone entry point ----------------------------------------------------------------------


def test_python_dash_m_runs_a_seeded_simulator() -> None:
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meta.simulator", "--port", str(port), "--seed", "demo",
         "--access-token", "EAAdemo", "--app-secret", "demo-secret"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        banner = "".join(proc.stdout.readline() for _ in range(5))
        assert "EAAdemo" in banner and "demo-secret" in banner
        waba_id = re.search(r"Demo WABA id:\s+(\d+)", banner)
        assert waba_id
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/{API}/{waba_id.group(1)}/message_templates",
                                     headers=bearer("EAAdemo"))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.1)
        templates = response.json()["data"]
        assert templates[0]["name"] == "hello_world" and templates[0]["status"] == "APPROVED"
        numbers = httpx.get(f"http://127.0.0.1:{port}/{API}/{waba_id.group(1)}/phone_numbers",
                            headers=bearer("EAAdemo")).json()["data"]
        assert len(numbers) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)
