"""Tests for meta.webhook_parser.

Payloads are built here in the shapes documented by Meta for the WhatsApp
Cloud API; the optional acceptance test reads real-world bodies from a shared
folder outside the repository without copying them.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta.webhook_parser import (
    SUMMARY_MAX_CHARS,
    InboundMessage,
    OtherChange,
    ParsedWebhook,
    StatusUpdate,
    TemplateStatusUpdate,
    WebhookPayloadError,
    parse_webhook,
)
from tests.examples import examples

WABA = "300000000000001"
PHONE_ID = "400000000000002"
DISPLAY = "15550001111"
CUSTOMER = "15557654321"
TS = "1717171717"
TS_DT = datetime(2024, 5, 31, 16, 8, 37, tzinfo=UTC)
RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- builders


def _message(
    msg_type: str, payload: object = None, *, wamid: str = "wamid.IN1", **extra: Any
) -> dict[str, Any]:
    msg: dict[str, Any] = {"from": CUSTOMER, "id": wamid, "timestamp": TS, "type": msg_type}
    if payload is not None:
        msg[msg_type] = payload
    msg.update(extra)
    return msg


def _messages_value(
    messages: list[Any] | None = None,
    statuses: list[Any] | None = None,
    contacts: list[Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID},
    }
    if contacts is None and messages is not None:
        contacts = [{"profile": {"name": "Ada Lovelace"}, "wa_id": CUSTOMER}]
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    value.update(extra)
    return value


def _body(*changes: dict[str, Any], waba: str = WABA) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "changes": list(changes)}],
    }


def _change(value: object, field: str = "messages") -> dict[str, Any]:
    return {"value": value, "field": field}


def _parse_one(msg: dict[str, Any], **value_extra: Any) -> InboundMessage:
    parsed = parse_webhook(_body(_change(_messages_value([msg], **value_extra))), received_at=RECEIVED)
    assert len(parsed.messages) == 1
    return parsed.messages[0]


def _status(status: str, *, wamid: str = "wamid.OUT1", **extra: Any) -> dict[str, Any]:
    st_: dict[str, Any] = {"id": wamid, "status": status, "timestamp": TS, "recipient_id": CUSTOMER}
    st_.update(extra)
    return st_


# --------------------------------------------------------------------------- message types


def test_text_message_fields() -> None:
    msg = _message("text", {"body": "Hello, I need help with my order"})
    parsed = parse_webhook(_body(_change(_messages_value([msg]))), received_at=RECEIVED)
    assert isinstance(parsed, ParsedWebhook)
    assert parsed.object == "whatsapp_business_account"
    assert parsed.waba_ids == [WABA]
    assert parsed.statuses == [] and parsed.template_updates == [] and parsed.other_changes == []
    (m,) = parsed.messages
    assert m.wamid == "wamid.IN1"
    assert m.waba_id == WABA
    assert m.phone_number_id == PHONE_ID
    assert m.display_phone_number == DISPLAY
    assert m.from_wa_id == CUSTOMER
    assert m.customer_name == "Ada Lovelace"
    assert m.type == "text"
    assert m.timestamp == TS_DT
    assert m.summary == "Hello, I need help with my order"
    assert m.context is None and m.referral is None and m.errors == []
    assert m.raw is msg


def test_image_with_caption_and_without() -> None:
    media = {"mime_type": "image/jpeg", "sha256": "abc=", "id": "9001"}
    assert _parse_one(_message("image", {**media, "caption": "broken screen"})).summary == "broken screen"
    assert _parse_one(_message("image", media)).summary == "[image]"


def test_audio_voice_and_plain_audio() -> None:
    audio = {"mime_type": "audio/ogg; codecs=opus", "sha256": "x=", "id": "9002"}
    assert _parse_one(_message("audio", {**audio, "voice": True})).summary == "[voice message]"
    assert _parse_one(_message("audio", {**audio, "voice": False})).summary == "[audio]"


def test_video() -> None:
    video = {"mime_type": "video/mp4", "sha256": "v=", "id": "9003"}
    assert _parse_one(_message("video", video)).summary == "[video]"
    assert _parse_one(_message("video", {**video, "caption": "see this"})).summary == "see this"


def test_document_with_filename() -> None:
    doc = {"filename": "invoice-42.pdf", "mime_type": "application/pdf", "sha256": "d=", "id": "9004"}
    m = _parse_one(_message("document", doc))
    assert m.type == "document"
    assert m.summary == "[document: invoice-42.pdf]"
    assert _parse_one(_message("document", {**doc, "caption": "my bill"})).summary == (
        "[document: invoice-42.pdf] my bill"
    )


def test_sticker() -> None:
    m = _parse_one(_message("sticker", {"mime_type": "image/webp", "id": "9005", "animated": True}))
    assert (m.type, m.summary) == ("sticker", "[sticker]")


def test_location_named_and_coordinates_only() -> None:
    named = {"latitude": 48.8584, "longitude": 2.2945, "name": "Eiffel Tower", "address": "Paris"}
    assert _parse_one(_message("location", named)).summary == "[location: Eiffel Tower, Paris]"
    coords = {"latitude": 48.8584, "longitude": 2.2945}
    assert _parse_one(_message("location", coords)).summary == "[location: 48.8584, 2.2945]"


def test_contacts_message() -> None:
    cards = [
        {"name": {"formatted_name": "Grace Hopper", "first_name": "Grace"}, "phones": [{"phone": "+1 555"}]},
        {"name": {"first_name": "Alan", "last_name": "Turing"}},
    ]
    m = _parse_one(_message("contacts", cards))
    assert m.type == "contacts"
    assert m.summary == "[contacts: Grace Hopper, Alan Turing]"
    # The sender's name still comes from value.contacts, not the shared cards.
    assert m.customer_name == "Ada Lovelace"


def test_interactive_button_reply() -> None:
    payload = {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes, please"}}
    m = _parse_one(_message("interactive", payload, context={"from": DISPLAY, "id": "wamid.OUT9"}))
    assert m.summary == "Yes, please"
    assert m.context == {"from": DISPLAY, "id": "wamid.OUT9"}


def test_interactive_list_reply() -> None:
    payload = {
        "type": "list_reply",
        "list_reply": {"id": "opt-2", "title": "Billing", "description": "Invoices"},
    }
    assert _parse_one(_message("interactive", payload)).summary == "Billing"


def test_interactive_flow_reply_and_unknown_subtype() -> None:
    flow = {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{}"}}
    assert _parse_one(_message("interactive", flow)).summary == "Sent"
    assert (
        _parse_one(_message("interactive", {"type": "hologram_reply"})).summary
        == "[interactive: hologram_reply]"
    )
    # Meta sometimes sends an interactive message with no payload at all.
    assert _parse_one(_message("interactive")).summary == "[interactive]"


def test_button_message() -> None:
    m = _parse_one(_message("button", {"payload": "STOP_PROMOS", "text": "Stop promotions"}))
    assert (m.type, m.summary) == ("button", "Stop promotions")


def test_reaction_and_reaction_removal() -> None:
    m = _parse_one(_message("reaction", {"message_id": "wamid.OUT7", "emoji": "👍"}))
    assert m.summary == "reacted 👍 to wamid.OUT7"
    assert _parse_one(_message("reaction", {"message_id": "wamid.OUT7"})).summary == (
        "removed reaction from wamid.OUT7"
    )


def test_order() -> None:
    order = {
        "catalog_id": "777",
        "text": "deliver after 6pm",
        "product_items": [
            {"product_retailer_id": "SKU1", "quantity": 2, "item_price": 10, "currency": "EUR"},
            {"product_retailer_id": "SKU2", "quantity": 1, "item_price": 5, "currency": "EUR"},
        ],
    }
    assert _parse_one(_message("order", order)).summary == "[order: 2 items] deliver after 6pm"
    assert _parse_one(_message("order", {**order, "text": "", "product_items": [{}]})).summary == (
        "[order: 1 item]"
    )


def test_system_message_without_contacts() -> None:
    system = {"body": "Customer changed their number", "wa_id": "15550009999", "type": "user_changed_number"}
    msg = _message("system", system)
    parsed = parse_webhook(_body(_change(_messages_value([msg], contacts=[]))), received_at=RECEIVED)
    (m,) = parsed.messages
    assert m.summary == "Customer changed their number"
    assert m.customer_name is None


def test_unsupported_with_errors() -> None:
    errors = [{"code": 131051, "title": "Message type unknown", "error_data": {"details": "not supported"}}]
    m = _parse_one(_message("unsupported", errors=errors))
    assert m.type == "unsupported"
    assert m.summary == "[unsupported message]"
    assert m.errors == errors


def test_request_welcome() -> None:
    m = _parse_one(_message("request_welcome"))
    assert m.type == "request_welcome"
    assert m.summary


def test_unknown_future_type_is_kept() -> None:
    msg = _message("hologram", {"shape": "cube", "colors": ["red"]}, brand_new_field={"x": 1})
    m = _parse_one(msg)
    assert m.type == "hologram"
    assert m.summary == "[hologram]"
    assert m.raw == msg and m.raw["brand_new_field"] == {"x": 1}


def test_revoke_and_edit_are_kept_as_messages() -> None:
    revoke = _parse_one(_message("revoke", {"original_message_id": "wamid.IN0"}))
    assert (revoke.type, revoke.summary) == ("revoke", "[message deleted]")
    edit_payload = {
        "original_message_id": "wamid.IN0",
        "message": {"type": "text", "text": {"body": "fixed"}},
    }
    edit = _parse_one(_message("edit", edit_payload))
    assert (edit.type, edit.summary) == ("edit", "[edited] fixed")


def test_echo_from_business_number_is_kept() -> None:
    m = _parse_one(
        {
            "from": DISPLAY,
            "to": CUSTOMER,
            "id": "wamid.ECHO",
            "timestamp": TS,
            "type": "text",
            "text": {"body": "sent from the phone app"},
        }
    )
    assert m.from_wa_id == DISPLAY
    assert m.summary == "sent from the phone app"


def test_long_text_summary_is_clipped_but_raw_is_complete() -> None:
    body = "x" * (SUMMARY_MAX_CHARS * 3)
    m = _parse_one(_message("text", {"body": body}))
    assert len(m.summary) == SUMMARY_MAX_CHARS
    assert m.raw["text"]["body"] == body


# --------------------------------------------------------------------------- context, referral, names, time


def test_context_and_referral_preserved() -> None:
    context = {"from": DISPLAY, "id": "wamid.OUT3", "forwarded": True}
    referral = {
        "source_url": "https://fb.example/ad/1",
        "source_id": "ad-1",
        "source_type": "ad",
        "headline": "Spring sale",
        "body": "20% off",
        "media_type": "image",
        "image_url": "https://cdn.example/1.jpg",
        "ctwa_clid": "clid-123",
    }
    m = _parse_one(_message("text", {"body": "I saw your ad"}, context=context, referral=referral))
    assert m.context == context
    assert m.referral == referral


def test_customer_name_matches_sender_not_first_contact() -> None:
    contacts = [
        {"profile": {"name": "Someone Else"}, "wa_id": "15550000000"},
        {"profile": {"name": "Right Person"}, "wa_id": CUSTOMER},
    ]
    msg = _message("text", {"body": "hi"})
    assert _parse_one(msg, contacts=contacts).customer_name == "Right Person"


def test_customer_name_falls_back_to_first_contact() -> None:
    contacts = [{"profile": {"name": "Only Contact"}, "wa_id": "15550000000"}]
    assert _parse_one(_message("text", {"body": "hi"}), contacts=contacts).customer_name == "Only Contact"


def test_customer_name_matches_business_scoped_user_id() -> None:
    contacts = [
        {"profile": {"name": "First"}, "user_id": "US.1"},
        {"profile": {"name": "Second"}, "user_id": "US.2"},
    ]
    msg = {"from_user_id": "US.2", "id": "wamid.B", "timestamp": TS, "type": "text", "text": {"body": "hey"}}
    m = _parse_one(msg, contacts=contacts)
    assert m.from_wa_id == ""
    assert m.from_user_id == "US.2"
    assert m.customer_name == "Second"


@pytest.mark.parametrize("bad_ts", [None, "", "yesterday", "1e400", "99999999999999999999", True, [1]])
def test_missing_or_invalid_timestamp_uses_received_at(bad_ts: object) -> None:
    msg = _message("text", {"body": "hi"})
    if bad_ts is None:
        del msg["timestamp"]
    else:
        msg["timestamp"] = bad_ts
    assert _parse_one(msg).timestamp == RECEIVED


def test_invalid_timestamp_defaults_to_now_utc() -> None:
    msg = _message("text", {"body": "hi"})
    del msg["timestamp"]
    before = datetime.now(UTC)
    parsed = parse_webhook(_body(_change(_messages_value([msg]))))
    after = datetime.now(UTC)
    assert before <= parsed.messages[0].timestamp <= after


def test_integer_timestamp_and_missing_from() -> None:
    msg = {"id": "wamid.NOFROM", "timestamp": int(TS), "type": "text", "text": {"body": "hi"}}
    assert _parse_one(msg, contacts=[]).from_wa_id == ""
    m = _parse_one(msg)
    assert m.timestamp == TS_DT
    # No `from`, one contact: the contact is the sender (Meta lists the senders of a change there).
    assert m.from_wa_id == CUSTOMER


# --------------------------------------------------------------------------- sender identity (BSUID, username)


def test_business_scoped_user_id_and_username_of_a_sender_without_phone_number() -> None:
    contacts = [{"profile": {"name": "Pat", "username": "@pat.shop"}, "user_id": "US.13491208655302741918"}]
    msg = {"from_user_id": "US.13491208655302741918", "id": "wamid.U", "timestamp": TS, "type": "text",
           "text": {"body": "hi"}}
    m = _parse_one(msg, contacts=contacts)
    assert (m.from_wa_id, m.from_user_id, m.username, m.customer_name) == (
        "", "US.13491208655302741918", "@pat.shop", "Pat")
    assert m.identity_change is None


def test_business_scoped_user_id_from_the_matching_contact_when_the_message_has_only_a_number() -> None:
    contacts = [{"profile": {"name": "Other"}, "wa_id": "15550000000", "user_id": "US.OTHER"},
                {"profile": {"name": "Ada", "username": "ada"}, "wa_id": CUSTOMER, "user_id": "DE.ADA1"}]
    m = _parse_one(_message("text", {"body": "hi"}), contacts=contacts)
    assert (m.from_wa_id, m.from_user_id, m.username, m.customer_name) == (CUSTOMER, "DE.ADA1", "ada", "Ada")


def test_a_contact_of_another_sender_lends_no_identity() -> None:
    contacts = [{"profile": {"name": "Else", "username": "else"}, "wa_id": "15550000000", "user_id": "US.ELSE"}]
    m = _parse_one(_message("text", {"body": "hi"}), contacts=contacts)
    assert (m.from_wa_id, m.from_user_id, m.username) == (CUSTOMER, None, None)


def test_sender_without_from_takes_the_identity_of_the_sole_contact() -> None:
    contacts = [{"profile": {"name": "Uma", "username": "uma"}, "user_id": "BR.UMA"}]
    msg = {"id": "wamid.N", "timestamp": TS, "type": "text", "text": {"body": "oi"}}
    m = _parse_one(msg, contacts=contacts)
    assert (m.from_wa_id, m.from_user_id, m.username) == ("", "BR.UMA", "uma")


def test_user_changed_number_system_message() -> None:
    msg = _message("system", {"body": "User A changed from 1 to 2", "wa_id": "15559990000",
                              "type": "user_changed_number", "user_id": "US.NEW", "previous_user_id": "US.OLD"})
    m = _parse_one(msg, contacts=[])
    assert m.from_wa_id == CUSTOMER
    assert m.identity_change is not None
    assert (m.identity_change.kind, m.identity_change.new_wa_id, m.identity_change.new_user_id,
            m.identity_change.previous_user_id) == ("user_changed_number", "15559990000", "US.NEW", "US.OLD")


def test_user_changed_user_id_system_message() -> None:
    msg = {"from_user_id": "US.OLD", "id": "wamid.S", "timestamp": TS, "type": "system",
           "system": {"body": "id changed", "type": "user_changed_user_id", "new_user_id": "US.NEW"}}
    m = _parse_one(msg, contacts=[])
    assert m.identity_change is not None
    assert (m.from_user_id, m.identity_change.new_user_id, m.identity_change.new_wa_id) == ("US.OLD", "US.NEW", None)
    other = _parse_one(_message("system", {"body": "x", "type": "customer_identity_changed"}))
    assert other.identity_change is None


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize("status", ["sent", "delivered", "read", "played", "deleted", "warning_future"])
def test_status_kinds(status: str) -> None:
    conversation = {"id": "conv-1", "origin": {"type": "service"}}
    pricing = {"billable": True, "pricing_model": "PMP", "category": "service"}
    raw = _status(status, conversation=conversation, pricing=pricing)
    parsed = parse_webhook(_body(_change(_messages_value(statuses=[raw]))), received_at=RECEIVED)
    assert parsed.messages == [] and parsed.other_changes == []
    (s,) = parsed.statuses
    assert isinstance(s, StatusUpdate)
    assert (s.wamid, s.waba_id, s.phone_number_id, s.status) == ("wamid.OUT1", WABA, PHONE_ID, status)
    assert s.timestamp == TS_DT
    assert s.recipient_id == CUSTOMER
    assert s.conversation == conversation and s.pricing == pricing
    assert s.errors == []
    assert s.raw is raw


def test_failed_status_with_errors() -> None:
    errors = [{"code": 131047, "title": "Re-engagement message", "error_data": {"details": "24h window"}}]
    parsed = parse_webhook(_body(_change(_messages_value(statuses=[_status("failed", errors=errors)]))))
    (s,) = parsed.statuses
    assert s.status == "failed"
    assert s.errors == errors
    assert s.conversation is None and s.pricing is None


def test_change_with_messages_and_statuses() -> None:
    value = _messages_value([_message("text", {"body": "a"})], [_status("read")])
    parsed = parse_webhook(_body(_change(value)))
    assert [m.wamid for m in parsed.messages] == ["wamid.IN1"]
    assert [s.wamid for s in parsed.statuses] == ["wamid.OUT1"]
    assert parsed.other_changes == []


# --------------------------------------------------------------------------- other change kinds


def test_template_status_update() -> None:
    value = {
        "event": "REJECTED",
        "message_template_id": 123456789012,
        "message_template_name": "order_ready",
        "message_template_language": "en_US",
        "reason": "INVALID_FORMAT",
        "brand_new": {"kept": True},
    }
    parsed = parse_webhook(_body(_change(value, "message_template_status_update")))
    (t,) = parsed.template_updates
    assert isinstance(t, TemplateStatusUpdate)
    assert t.waba_id == WABA
    assert t.event == "REJECTED"
    assert t.message_template_id == "123456789012"
    assert t.message_template_name == "order_ready"
    assert t.message_template_language == "en_US"
    assert t.reason == "INVALID_FORMAT"
    assert t.raw is value


def test_unknown_field_kept_as_other_change() -> None:
    value = {"event": "SOMETHING_NEW", "details": [1, 2, 3]}
    parsed = parse_webhook(_body(_change(value, "account_update"), _change("scalar!", "future_field")))
    assert parsed.other_changes == [
        OtherChange(waba_id=WABA, field="account_update", value=value),
        OtherChange(waba_id=WABA, field="future_field", value="scalar!"),
    ]


def test_value_level_errors_kept_as_other_change_alongside_message() -> None:
    errors = [{"code": 131000, "title": "Something went wrong"}]
    value = _messages_value([_message("interactive")], errors=errors)
    parsed = parse_webhook(_body(_change(value)))
    assert len(parsed.messages) == 1
    assert parsed.other_changes == [OtherChange(waba_id=WABA, field="messages", value=value)]


def test_messages_change_with_nothing_recognisable_is_kept() -> None:
    value = _messages_value(message_echoes=[{"id": "wamid.E"}])
    parsed = parse_webhook(_body(_change(value)))
    assert parsed.messages == [] and parsed.statuses == []
    assert parsed.other_changes == [OtherChange(waba_id=WABA, field="messages", value=value)]


def test_unknown_object_and_entry_without_changes_are_kept() -> None:
    entry = {"id": "page-1", "time": 1, "messaging": [{"sender": {"id": "1"}}]}
    parsed = parse_webhook({"object": "page", "entry": [entry]})
    assert parsed.object == "page"
    assert parsed.other_changes == [OtherChange(waba_id="page-1", field="", value=entry)]


def test_empty_entry_list_and_missing_object() -> None:
    parsed = parse_webhook({"entry": []})
    assert parsed.object is None
    assert parsed.waba_ids == []
    assert not (parsed.messages or parsed.statuses or parsed.template_updates or parsed.other_changes)


def test_batched_body() -> None:
    waba2 = "300000000000002"
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    _change(
                        _messages_value(
                            [
                                _message("text", {"body": "1"}, wamid="wamid.A"),
                                _message("text", {"body": "2"}, wamid="wamid.B"),
                            ]
                        )
                    ),
                    _change(_messages_value(statuses=[_status("delivered", wamid="wamid.S1")])),
                ],
            },
            {
                "id": waba2,
                "changes": [
                    _change(
                        {"event": "APPROVED", "message_template_id": "55"}, "message_template_status_update"
                    ),
                    _change({"event": "ACCOUNT_VIOLATION"}, "account_update"),
                    _change(
                        _messages_value(
                            [_message("reaction", {"message_id": "wamid.S1", "emoji": "❤"}, wamid="wamid.C")]
                        )
                    ),
                ],
            },
            {"id": WABA, "changes": []},
        ],
    }
    parsed = parse_webhook(body)
    assert [m.wamid for m in parsed.messages] == ["wamid.A", "wamid.B", "wamid.C"]
    assert [m.waba_id for m in parsed.messages] == [WABA, WABA, waba2]
    assert [s.wamid for s in parsed.statuses] == ["wamid.S1"]
    assert [(t.waba_id, t.message_template_id) for t in parsed.template_updates] == [(waba2, "55")]
    assert [(o.waba_id, o.field) for o in parsed.other_changes] == [(waba2, "account_update")]
    assert parsed.waba_ids == [WABA, waba2]


def test_records_are_frozen() -> None:
    m = _parse_one(_message("text", {"body": "hi"}))
    with pytest.raises(AttributeError):
        m.summary = "changed"  # type: ignore[misc]


# --------------------------------------------------------------------------- structural errors


def _ok_message() -> dict[str, Any]:
    return _message("text", {"body": "hi"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ("not json object", "body"),
        (None, "body"),
        ({"object": "whatsapp_business_account"}, "entry"),
        ({"entry": {"id": WABA}}, "entry"),
        ({"entry": [{"id": WABA, "changes": []}, "oops"]}, "entry[1]"),
        ({"entry": [{"changes": []}]}, "entry[0].id"),
        ({"entry": [{"id": WABA, "changes": {"field": "messages"}}]}, "entry[0].changes"),
        ({"entry": [{"id": WABA, "changes": [42]}]}, "entry[0].changes[0]"),
        ({"entry": [{"id": WABA, "changes": [{"value": {}}]}]}, "entry[0].changes[0].field"),
        (_body(_change(None)), "entry[0].changes[0].value"),
        (_body(_change([], "message_template_status_update")), "entry[0].changes[0].value"),
        (_body(_change(_messages_value(messages={"id": "x"}))), "entry[0].changes[0].value.messages"),  # type: ignore[arg-type]
        (_body(_change(_messages_value(["x"]))), "entry[0].changes[0].value.messages[0]"),
        (
            _body(_change(_messages_value([_ok_message(), {"from": CUSTOMER, "type": "text"}]))),
            "entry[0].changes[0].value.messages[1].id",
        ),
        (
            _body(_change(_messages_value([{**_ok_message(), "id": ""}]))),
            "entry[0].changes[0].value.messages[0].id",
        ),
        (
            _body(_change(_messages_value(statuses=[{"status": "sent"}]))),
            "entry[0].changes[0].value.statuses[0].id",
        ),
        (_body(_change(_messages_value(statuses="sent"))), "entry[0].changes[0].value.statuses"),  # type: ignore[arg-type]
    ],
)
def test_structural_errors(body: object, field: str) -> None:
    with pytest.raises(WebhookPayloadError) as excinfo:
        parse_webhook(body)
    assert excinfo.value.field == field
    assert isinstance(excinfo.value, Exception)
    assert excinfo.value.message
    assert str(excinfo.value).startswith(field)


def test_error_message_does_not_echo_payload_content() -> None:
    secret = "my card number is 4111"
    with pytest.raises(WebhookPayloadError) as excinfo:
        parse_webhook(_body(_change(_messages_value([{"type": "text", "text": {"body": secret}}]))))
    assert secret not in str(excinfo.value)


# --------------------------------------------------------------------------- property test

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Any key except `id`, whose absence/invalidity is (by design) a structural error.
# Known keys are mixed in so injected junk also *replaces* fields the parser reads.
_extra_keys = st.sampled_from(
    ["type", "from", "from_user_id", "timestamp", "context", "referral", "errors", "text", "image", "edit"]
) | st.text(max_size=12).filter(lambda k: k != "id")
_payload_keys = st.sampled_from(
    [
        "body",
        "caption",
        "filename",
        "voice",
        "emoji",
        "message_id",
        "type",
        "product_items",
        "message",
        "name",
    ]
) | st.text(max_size=12)
_base_messages = st.sampled_from(
    [
        _message("text", {"body": "hello"}),
        _message("image", {"id": "1", "caption": "c"}),
        _message("audio", {"id": "2", "voice": True}),
        _message("location", {"latitude": 1.5, "longitude": 2.5}),
        _message("contacts", [{"name": {"formatted_name": "X"}}]),
        _message("interactive", {"type": "list_reply", "list_reply": {"id": "a", "title": "A"}}),
        _message("reaction", {"message_id": "wamid.Z", "emoji": "🔥"}),
        _message("order", {"product_items": [{}]}),
        _message("edit", {"message": {"type": "text", "text": {"body": "e"}}}),
        _message("unsupported", errors=[{"code": 1}]),
    ]
)


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(
    base=_base_messages,
    extra=st.dictionaries(_extra_keys, _json_values, max_size=6),
    payload_extra=st.dictionaries(_payload_keys, _json_values, max_size=4),
)
def test_extra_keys_never_break_parsing(
    base: dict[str, Any], extra: dict[str, Any], payload_extra: dict[str, Any]
) -> None:
    msg = copy.deepcopy(base)
    payload = msg.get(msg["type"])
    if isinstance(payload, dict):
        payload.update(payload_extra)
    msg.update(extra)
    snapshot = copy.deepcopy(msg)

    parsed = parse_webhook(_body(_change(_messages_value([msg]))), received_at=RECEIVED)

    (m,) = parsed.messages
    assert m.wamid == base["id"]
    assert m.raw == snapshot  # untouched, extras included
    assert isinstance(m.summary, str) and len(m.summary) <= SUMMARY_MAX_CHARS
    assert isinstance(m.type, str) and isinstance(m.from_wa_id, str)
    assert m.timestamp.tzinfo is not None


# --------------------------------------------------------------------------- acceptance (real payloads)

PYWA_DIR = Path(__file__).resolve().parents[2] / "shared" / "meta-webhooks" / "pywa"


def _pywa_cases() -> list[tuple[str, Any]]:
    if not PYWA_DIR.is_dir():
        return []
    cases: list[tuple[str, Any]] = []
    for path in sorted(PYWA_DIR.glob("*.json")):
        for name, body in json.loads(path.read_text(encoding="utf-8")).items():
            cases.append((f"{path.stem}:{name}", body))
    return cases


def _assert_nothing_lost(body: dict[str, Any], parsed: ParsedWebhook) -> None:
    expected_messages = expected_statuses = expected_templates = expected_other = 0
    for entry in body["entry"]:
        waba = str(entry["id"])
        for change in entry["changes"]:
            field, value = change["field"], change["value"]
            if field == "messages":
                for msg in value.get("messages", []):
                    expected_messages += 1
                    assert any(
                        m.wamid == msg["id"] and m.raw == msg and m.waba_id == waba for m in parsed.messages
                    ), msg["id"]
                for status in value.get("statuses", []):
                    expected_statuses += 1
                    assert any(s.wamid == status["id"] and s.raw == status for s in parsed.statuses)
                if "errors" in value:
                    expected_other += 1
                    assert OtherChange(waba_id=waba, field="messages", value=value) in parsed.other_changes
            elif field == "message_template_status_update":
                expected_templates += 1
                assert any(t.raw == value and t.waba_id == waba for t in parsed.template_updates)
            else:
                expected_other += 1
                assert OtherChange(waba_id=waba, field=field, value=value) in parsed.other_changes
    # Nothing lost and nothing invented.
    assert len(parsed.messages) == expected_messages
    assert len(parsed.statuses) == expected_statuses
    assert len(parsed.template_updates) == expected_templates
    assert len(parsed.other_changes) == expected_other


@pytest.mark.skipif(not PYWA_DIR.is_dir(), reason=f"real pywa webhook payloads not available at {PYWA_DIR}")
def test_pywa_payloads_nothing_lost() -> None:
    cases = _pywa_cases()
    assert cases, f"no *.json cases found in {PYWA_DIR}"
    for name, body in cases:
        try:
            parsed = parse_webhook(body, received_at=RECEIVED)
        except WebhookPayloadError as exc:  # pragma: no cover - reported with the case name
            pytest.fail(f"{name}: {exc}")
        _assert_nothing_lost(body, parsed)
        for m in parsed.messages:
            assert m.summary, name
            assert m.timestamp != RECEIVED, f"{name}: real payloads all carry a valid timestamp"
