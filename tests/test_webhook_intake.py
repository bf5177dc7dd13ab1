"""Acceptance: Meta's webhook — subscription handshake, signatures, limits, and durable idempotent intake."""

from __future__ import annotations

import json
from typing import Any

import httpx

from meta.signature import HEADER, sign
from meta.simulator import payloads
from meta.simulator.state import new_wamid
from tests.support import Gateway, Org, add_simulated_waba, create_org, link_waba, org_with_waba, query_db, unique


def _stored(org: Org) -> list[tuple[Any, ...]]:
    return query_db(org.gateway, "SELECT wamid, type, inbox_id, phone_number_id, from_wa_id, customer_name, summary "
                                 "FROM inbound_messages WHERE org_id = :o ORDER BY id", o=org.id)


def _count(org: Org, table: str) -> int:
    return int(query_db(org.gateway, f"SELECT count(*) FROM {table} WHERE org_id = :o", o=org.id)[0][0])


def _post_raw(org: Org, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return org.gateway.http.post(f"/webhooks/whatsapp/{org.id}", content=body, headers=headers)


def _signed(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", HEADER: sign(body, secret)}


# ---------------------------------------------------------------- handshake


def test_subscription_handshake(gateway: Gateway) -> None:
    org = create_org(gateway)
    token = gateway.ok("GET", org.path("/whatsapp/webhook"), org.owner_token)["verify_token"]
    url = f"/webhooks/whatsapp/{org.id}"
    ok = gateway.http.get(url, params={"hub.mode": "subscribe", "hub.verify_token": token,
                                       "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    refused = [
        {"hub.mode": "subscribe", "hub.verify_token": token + "x", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": token, "hub.challenge": "1"},
        {"hub.verify_token": token, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "ünïcödé", "hub.challenge": "1"},
    ]
    for params in refused:
        response = gateway.http.get(url, params=params)
        assert response.status_code == 403, params
        assert "1158201444" not in response.text


# ---------------------------------------------------------------- refusals store nothing


def test_unsigned_forged_oversized_or_malformed_deliveries_are_refused_and_store_nothing(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    stranger = org_with_waba(gateway)  # another org's WABA, with its own real secret
    body, headers = org.sender().prepare(payloads_for(org, 2))
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (body, {"Content-Type": "application/json"}, 401),
        (body, {**headers, HEADER: ""}, 401),
        (body, {**headers, HEADER: sign(body, "not-the-secret")}, 403),
        (body, {**headers, HEADER: sign(body, org.app_secret).replace("sha256=", "sha1=")}, 403),
        (body, {**headers, HEADER: ("sha256=" + "é" * 64).encode("latin-1")}, 403),  # type: ignore[dict-item]
        (body + b" ", headers, 403),  # the signature covers the exact bytes
        (body, _signed(body, stranger.app_secret), 403),
    ]
    foreign = json.dumps(payloads.inbound_message(stranger.waba_id, stranger.numbers[0], "+1", "155501", "X")).encode()
    cases.append((foreign, _signed(foreign, stranger.app_secret), 403))  # a WABA not linked to this org
    cases.append((b"{not json", _signed(b"{not json", org.app_secret), 400))
    cases.append((b"\xff\xfe", _signed(b"\xff\xfe", org.app_secret), 400))
    nested = b"[" * 200_000 + b"]" * 200_000
    cases.append((nested, _signed(nested, org.app_secret), 400))
    for raw in (b'{"object":"whatsapp_business_account","entry":[]}', b'{"entry":[{"changes":[]}]}', b"[]",
                b'{"entry":[{"id":' + org.waba_id.encode() + b',"changes":[{"value":NaN,"field":"messages"}]}]}'):
        cases.append((raw, _signed(raw, org.app_secret), 400))
    huge = json.dumps({"object": "whatsapp_business_account", "pad": "x" * (1024 * 1024)}).encode()
    cases.append((huge, _signed(huge, org.app_secret), 413))
    for raw, hdrs, expected in cases:
        response = _post_raw(org, raw, hdrs)
        assert response.status_code == expected, f"{raw[:60]!r} {hdrs.get(HEADER)!r}: {response.status_code}"
    assert _stored(org) == [] and _count(org, "webhook_changes") == 0
    # Chunked, without a Content-Length, the size limit still holds.
    chunks = (huge[i:i + 65536] for i in range(0, len(huge), 65536))
    streamed = gateway.http.post(f"/webhooks/whatsapp/{org.id}", content=chunks, headers=_signed(huge, org.app_secret))
    assert streamed.status_code == 413
    # A genuine delivery still goes through.
    assert _post_raw(org, body, headers).status_code == 200
    assert len(_stored(org)) == 2


def payloads_for(org: Org, count: int, number_index: int = 0) -> dict[str, Any]:
    phone_id = org.numbers[number_index]
    messages = [payloads.text_message(f"1555{unique('c')[-6:]}", f"message {i}") for i in range(count)]
    return payloads.inbound_messages(org.waba_id, phone_id, f"+1 555 {phone_id[-7:]}", messages)


# ---------------------------------------------------------------- parsing and storing


def _every_message_type(customer: str) -> list[dict[str, Any]]:
    target = new_wamid()
    return [
        payloads.text_message(customer, "plain text"),
        payloads.image_message(customer, caption="a photo"),
        payloads.audio_message(customer),
        payloads.video_message(customer),
        payloads.document_message(customer, filename="invoice.pdf"),
        payloads.sticker_message(customer),
        payloads.location_message(customer),
        payloads.contacts_message(customer),
        payloads.button_reply_message(customer),
        payloads.list_reply_message(customer),
        payloads.button_message(customer),
        payloads.reaction_message(customer, target),
        payloads.reaction_message(customer, target, emoji=None),
        payloads.order_message(customer),
        payloads.system_message(customer, "15550009999"),
        payloads.unsupported_message(customer),
        payloads.text_message(customer, "a reply", context=payloads.reply_context("15550000000", target)),
        payloads.text_message(customer, "from an ad", referral=payloads.ad_referral()),
        # A type Meta may add tomorrow: kept, not refused.
        {"from": customer, "id": new_wamid(), "timestamp": "1700000000", "type": "hologram", "hologram": {"x": 1}},
    ]


def test_every_change_is_parsed_and_every_message_stored_once(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    inbox = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                       json={"name": "Intake", "phone_number_id": org.numbers[0], "assignment_mode": "manual"})
    customer = "15551230001"
    messages = _every_message_type(customer)
    phone_id, display = org.numbers[0], f"+1 555 {org.numbers[0][-7:]}"
    outbound = new_wamid()
    body = payloads.envelope(org.waba_id, [
        payloads.change(payloads.messages_value(phone_id, display, messages, [payloads.contact(customer, "Cleo")])),
        payloads.change(payloads.statuses_value(phone_id, display, [
            payloads.status(outbound, customer, s) for s in ("sent", "delivered", "read")])),
        payloads.change(payloads.statuses_value(phone_id, display, [payloads.status(new_wamid(), customer, "failed")])),
        payloads.template_status_update(org.waba_id, "778899", "welcome", "en_US", "REJECTED",
                                        "INVALID_FORMAT")["entry"][0]["changes"][0],
        payloads.change({"phone_number": display, "event": "FLAGGED"}, "phone_number_quality_update"),
        payloads.change({"anything": ["new"]}, "a_field_from_the_future"),
    ])
    response = org.sender().send_sync(body)
    assert response.status_code == 200, response.text
    assert response.json() == {"messages": len(messages), "duplicate_messages": 0, "statuses": 4, "other_changes": 3}

    stored = _stored(org)
    assert [row[0] for row in stored] == [m["id"] for m in messages]
    assert [row[1] for row in stored] == [m["type"] for m in messages]
    assert {row[2] for row in stored} == {inbox["id"]} and {row[3] for row in stored} == {phone_id}
    assert {row[4] for row in stored} == {customer} and {row[5] for row in stored} == {"Cleo"}
    assert [row[6] for row in stored[:2]] == ["plain text", "a photo"] and "invoice.pdf" in stored[4][6]
    raw = query_db(gateway, "SELECT raw FROM inbound_messages WHERE wamid = :w", w=messages[-1]["id"])[0][0]
    assert (json.loads(raw) if isinstance(raw, str) else raw)["hologram"] == {"x": 1}
    statuses = query_db(gateway, "SELECT wamid, status FROM message_statuses WHERE org_id = :o ORDER BY id", o=org.id)
    assert [s for w, s in statuses if w == outbound] == ["sent", "delivered", "read"]
    changes = query_db(gateway, "SELECT field, template_name, reason FROM webhook_changes WHERE org_id = :o "
                                "ORDER BY id", o=org.id)
    assert ("message_template_status_update", "welcome", "INVALID_FORMAT") in changes
    assert {c[0] for c in changes} >= {"phone_number_quality_update", "a_field_from_the_future"}

    # Meta redelivers the same body (it did not see our 200): nothing is stored twice.
    again = org.sender().send_sync(body)
    assert again.status_code == 200
    assert again.json() == {"messages": 0, "duplicate_messages": len(messages), "statuses": 0, "other_changes": 0}
    assert len(_stored(org)) == len(messages)
    assert _count(org, "message_statuses") == 4 and _count(org, "webhook_changes") == 3


def test_redelivery_in_another_body_and_repeats_within_one_body_are_not_stored_twice(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    message = payloads.text_message("15551230002", "once")
    phone_id = org.numbers[1]
    body = payloads.inbound_messages(org.waba_id, phone_id, "+1", [message, dict(message)])
    first = org.sender().send_sync(body).json()
    assert first["messages"] == 1 and first["duplicate_messages"] == 1
    # Same wamid, batched with a new message in a different body (Meta batches under load).
    fresh = payloads.text_message("15551230002", "twice")
    second = org.sender().send_sync(payloads.inbound_messages(org.waba_id, phone_id, "+1", [fresh, message])).json()
    assert second["messages"] == 1 and second["duplicate_messages"] == 1
    assert [row[0] for row in _stored(org)] == [message["id"], fresh["id"]]


def test_a_message_for_a_number_without_inbox_is_stored_and_acknowledged(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
               json={"name": "Only number 1", "phone_number_id": org.numbers[0]})
    body = payloads.inbound_message(org.waba_id, org.numbers[1], "+1 555", "15551230003", "Nadia", body="anyone?")
    response = org.sender().send_sync(body)
    assert response.status_code == 200 and response.json()["messages"] == 1
    (row,) = _stored(org)
    assert row[0] == body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert row[2] is None and row[3] == org.numbers[1] and row[6] == "anyone?"


def test_one_waba_linked_to_two_orgs_delivers_to_each_org_separately(gateway: Gateway) -> None:
    waba = add_simulated_waba(gateway)
    a, b = create_org(gateway), create_org(gateway)
    link_waba(a, waba)
    link_waba(b, waba)
    body = payloads.inbound_message(a.waba_id, a.numbers[0], "+1", "15551230004", "Sam", body="hi")
    assert a.sender().send_sync(body).json()["messages"] == 1
    assert b.sender().send_sync(body).json()["messages"] == 1  # its own copy, not a duplicate of A's
    assert len(_stored(a)) == 1 and len(_stored(b)) == 1


def test_unknown_organization_is_refused_like_a_wrong_secret(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    body, headers = org.sender().prepare(payloads_for(org, 1))
    handshake = {"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"}
    assert gateway.http.post("/webhooks/whatsapp/999999999", content=body, headers=headers).status_code == 403
    assert gateway.http.get("/webhooks/whatsapp/999999999", params=handshake).status_code == 403
    # An organization that links no WABA has no secret that could verify anything: refused the same way,
    # whatever the body (another organization's signed delivery, or signed bytes that are not JSON).
    lonely = create_org(gateway)
    assert _post_raw(lonely, body, headers).status_code == 403
    assert _post_raw(lonely, b"{not json", _signed(b"{not json", org.app_secret)).status_code == 403
    assert query_db(gateway, "SELECT count(*) FROM inbound_messages WHERE org_id = :o", o=lonely.id)[0][0] == 0
    for org_id in (str(2**70), "abc", "0"):
        assert gateway.http.post(f"/webhooks/whatsapp/{org_id}", content=body, headers=headers).status_code == 422
        assert gateway.http.get(f"/webhooks/whatsapp/{org_id}", params=handshake).status_code == 422
