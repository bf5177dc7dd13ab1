"""Fuzzing the webhook parser from valid bodies: anything may be mutated, added or removed, at any depth.

Two properties, on every mutated body:
  * the parser answers a ParsedWebhook or raises its documented WebhookPayloadError, nothing else;
  * it raises exactly when the body's skeleton is unusable (an independent walk of Meta's shape says so),
    and otherwise every message of the body reaches `messages`, whole and in order (none is lost).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta.webhook_parser import SUMMARY_MAX_CHARS, WebhookPayloadError, parse_webhook
from tests.examples import examples

RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)
_json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
                 | st.sampled_from(["", "0", "1e309", "-1", "messages", "text", "wamid.X", "NaN"]))
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# Keys the parser reads, so that mutations replace what matters as well as add noise.
_known_keys = st.sampled_from([
    "object", "entry", "id", "changes", "field", "value", "messaging_product", "metadata", "phone_number_id",
    "display_phone_number", "contacts", "profile", "name", "username", "wa_id", "user_id", "messages",
    "statuses", "from", "from_user_id", "timestamp", "type", "text", "body", "context", "referral", "errors",
    "status", "recipient_id", "conversation", "pricing", "event", "message_template_name", "interactive",
    "button", "reaction", "order", "system", "edit", "message", "image", "caption",
])

_PAYLOADS: list[tuple[str, Any]] = [
    ("text", {"body": "hello"}),
    ("image", {"id": "1", "caption": "look"}),
    ("audio", {"id": "2", "voice": True}),
    ("document", {"id": "3", "filename": "a.pdf"}),
    ("location", {"latitude": 1.5, "longitude": 2.5, "name": "Here"}),
    ("contacts", [{"name": {"formatted_name": "X"}}]),
    ("interactive", {"type": "button_reply", "button_reply": {"id": "b", "title": "B"}}),
    ("button", {"text": "Yes", "payload": "y"}),
    ("reaction", {"message_id": "wamid.Z", "emoji": "🔥"}),
    ("order", {"product_items": [{"product_retailer_id": "p"}]}),
    ("system", {"body": "changed", "type": "user_changed_number", "wa_id": "15550000000"}),
    ("edit", {"message": {"type": "text", "text": {"body": "edited"}}}),
    ("unsupported", None),
]


@st.composite
def _valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed body: one or two WABAs, each with messages and/or statuses and a template update."""
    counter = iter(range(10**6))
    entries = []
    for e in range(draw(st.integers(1, 2))):
        changes: list[dict[str, Any]] = []
        for _ in range(draw(st.integers(1, 2))):
            messages = []
            for _ in range(draw(st.integers(0, 3))):
                kind, payload = draw(st.sampled_from(_PAYLOADS))
                message: dict[str, Any] = {"from": "15557654321", "id": f"wamid.IN{next(counter)}",
                                           "timestamp": "1717171717", "type": kind}
                if payload is not None:
                    message[kind] = copy.deepcopy(payload)
                messages.append(message)
            value: dict[str, Any] = {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001111", "phone_number_id": f"40000000000000{e}"},
                "contacts": [{"profile": {"name": "Ada"}, "wa_id": "15557654321"}],
                "messages": messages,
            }
            if draw(st.booleans()):
                value["statuses"] = [{"id": f"wamid.OUT{next(counter)}", "status": "delivered",
                                      "timestamp": "1717171717", "recipient_id": "15557654321"}]
            changes.append({"field": "messages", "value": value})
        if draw(st.booleans()):
            changes.append({"field": "message_template_status_update",
                            "value": {"event": "APPROVED", "message_template_name": "welcome"}})
        entries.append({"id": f"30000000000000{e}", "changes": changes})
    return {"object": "whatsapp_business_account", "entry": entries}


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every dict and list of the body, with its path."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(node, dict | list):
        found.append((path, node))
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in children:
            found += _containers(child, (*path, key))
    return found


@st.composite
def _mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(_valid_bodies())
    for _ in range(draw(st.integers(1, 4))):
        _, node = draw(st.sampled_from(_containers(body)))
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if isinstance(node, dict):
            if action == "add" or not node:
                node[draw(_known_keys | st.text(max_size=8))] = draw(_json_values)
            else:
                key = draw(st.sampled_from(sorted(node)))
                if action == "delete":
                    del node[key]
                else:
                    node[key] = draw(_json_values)
        elif action == "add" or not node:
            node.insert(draw(st.integers(0, len(node))), draw(_json_values))
        else:
            index = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                del node[index]
            else:
                node[index] = draw(_json_values)
    return body


def _an_id(value: object) -> bool:
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def _expected_messages(body: object) -> list[dict[str, Any]] | None:
    """Meta's skeleton walked independently of the parser: the messages it carries, None when unusable."""
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        return None
    found: list[dict[str, Any]] = []
    for entry in body["entry"]:
        if not isinstance(entry, dict) or not (isinstance(entry.get("id"), str) or _an_id(entry.get("id"))):
            return None
        if "changes" not in entry:
            continue
        if not isinstance(entry["changes"], list):
            return None
        for change in entry["changes"]:
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                return None
            if change["field"] not in ("messages", "message_template_status_update"):
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                return None
            if change["field"] != "messages":
                continue
            for key in ("messages", "statuses"):
                if key in value and not (isinstance(value[key], list)
                                         and all(isinstance(m, dict) and _an_id(m.get("id")) for m in value[key])):
                    return None
            found += value.get("messages", [])
    return found


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_mutated_bodies())
def test_a_mutated_body_is_parsed_whole_or_refused_with_the_documented_error(body: dict[str, Any]) -> None:
    expected = _expected_messages(body)
    snapshot = copy.deepcopy(body)
    try:
        parsed = parse_webhook(body, received_at=RECEIVED)
    except WebhookPayloadError as refused:
        assert expected is None, f"a usable body was refused: {refused}"
        assert refused.field and refused.message
        return
    # Any other exception fails the test by itself: the parser documents only WebhookPayloadError.
    assert expected is not None, "an unusable skeleton was accepted"
    assert [m.raw for m in parsed.messages] == expected  # none lost, none invented, in order, untouched
    assert body == snapshot  # the parser changes nothing of what it was given
    for message in parsed.messages:
        assert message.wamid == str(message.raw["id"])
        assert isinstance(message.summary, str) and len(message.summary) <= SUMMARY_MAX_CHARS
        assert message.timestamp.tzinfo is not None


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_valid_bodies())
def test_a_valid_body_loses_nothing(body: dict[str, Any]) -> None:
    parsed = parse_webhook(body, received_at=RECEIVED)
    sent = [m for entry in body["entry"] for change in entry["changes"] if change["field"] == "messages"
            for m in change["value"]["messages"]]
    assert [m.wamid for m in parsed.messages] == [m["id"] for m in sent]
    assert all(m.summary for m in parsed.messages if m.type != "unsupported")
    statuses = [s for entry in body["entry"] for change in entry["changes"] if change["field"] == "messages"
                for s in change["value"].get("statuses", [])]
    assert [s.wamid for s in parsed.statuses] == [s["id"] for s in statuses]
