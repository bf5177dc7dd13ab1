"""Pure parser of WhatsApp Cloud API webhook bodies into typed records.

The gateway hands us Meta's POST body already JSON-decoded. We turn it into
`InboundMessage`, `StatusUpdate`, `TemplateStatusUpdate` and `OtherChange`
records. The guiding rule is *nothing is lost*: Meta adds fields, message
types and webhook `field`s all the time, so anything we do not understand is
kept verbatim (in `raw` / `OtherChange.value`) instead of being rejected.
`WebhookPayloadError` is raised only when the skeleton itself is unusable.

No I/O and no logging here: message bodies are personal data, and keeping the
parser pure makes it trivially testable and safe to run anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "SUMMARY_MAX_CHARS",
    "IdentityChange",
    "InboundMessage",
    "OtherChange",
    "ParsedWebhook",
    "StatusUpdate",
    "TemplateStatusUpdate",
    "WebhookPayloadError",
    "parse_webhook",
]

# Agents see the summary in queue lists; the full content stays in `raw`.
SUMMARY_MAX_CHARS = 500

# Keys of a `messages` change value that we fully account for. Anything else
# (value-level `errors`, future arrays...) makes us keep the whole value as an
# OtherChange so it is not silently dropped.
_MESSAGES_VALUE_KEYS = frozenset({"messaging_product", "metadata", "contacts", "messages", "statuses"})


class WebhookPayloadError(Exception):
    """The body's structure is unusable; `field` is a dotted path such as `entry[0].changes`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """A `system` message saying the sender's number (`user_changed_number`) or business-scoped user id
    (`user_changed_user_id`) changed. The previous identifiers are the message's sender (`from`,
    `from_user_id`) and `system.previous_user_id`; the new ones are `system.wa_id`/`new_wa_id` and
    `system.user_id`/`new_user_id`."""

    kind: str
    new_wa_id: str | None
    new_user_id: str | None
    previous_user_id: str | None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One object from `value.messages[]` (customer message, or an echo/edit/revoke Meta put there)."""

    wamid: str
    waba_id: str
    phone_number_id: str | None
    display_phone_number: str | None
    from_wa_id: str
    customer_name: str | None
    type: str
    timestamp: datetime
    summary: str
    context: dict[str, Any] | None
    referral: dict[str, Any] | None
    errors: list[dict[str, Any]]
    raw: dict[str, Any]
    # Business-scoped user id (BSUID: `from_user_id`, else the sender's `contacts[].user_id`), when present.
    # A user who adopted a username may come with a BSUID only: then `from_wa_id` is "".
    from_user_id: str | None = None
    # The sender's WhatsApp username (`contacts[].profile.username`), when shared.
    username: str | None = None
    identity_change: IdentityChange | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One object from `value.statuses[]` of a `messages` change (delivery receipts for our sends)."""

    wamid: str
    waba_id: str
    phone_number_id: str | None
    status: str
    timestamp: datetime
    recipient_id: str | None
    errors: list[dict[str, Any]]
    conversation: dict[str, Any] | None
    pricing: dict[str, Any] | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TemplateStatusUpdate:
    """A `message_template_status_update` change (template approved, rejected, paused...)."""

    waba_id: str
    event: str
    message_template_id: str | None
    message_template_name: str | None
    message_template_language: str | None
    reason: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OtherChange:
    """Any change not covered above, kept verbatim.

    `field` is the change's `field`; it is "" when an entry had no `changes`
    array at all (e.g. a non-WABA `object`), in which case `value` is the
    whole entry.
    """

    waba_id: str
    field: str
    value: object


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    object: str | None
    messages: list[InboundMessage]
    statuses: list[StatusUpdate]
    template_updates: list[TemplateStatusUpdate]
    other_changes: list[OtherChange]
    # Entry ids in body order (with repeats); kept so `waba_ids` also covers
    # entries whose changes produced no record.
    entry_ids: list[str] = field(default_factory=list)

    @property
    def waba_ids(self) -> list[str]:
        """Distinct entry ids (WABA ids) in order of appearance."""
        return list(dict.fromkeys(self.entry_ids))


# --------------------------------------------------------------------------- helpers


def _opt_str(value: object) -> str | None:
    """A string, or an int rendered as one (Meta is inconsistent about ids); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _opt_dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _dict_list(value: object) -> list[dict[str, Any]]:
    """Only the object items of a list; non-lists give []. Originals stay in `raw`."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _parse_timestamp(value: object, fallback: Callable[[], datetime]) -> datetime:
    """Meta sends epoch seconds as a string; anything unusable falls back to 'now'."""
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds):
        return fallback()
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return fallback()


def _require_id(obj: Mapping[str, Any], path: str) -> str:
    wamid = _opt_str(obj.get("id"))
    if not wamid:
        raise WebhookPayloadError(f"{path}.id", "missing or not a non-empty string")
    return wamid


def _require_list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise WebhookPayloadError(path, f"expected a list, got {type(value).__name__}")
    return value


def _require_dict(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookPayloadError(path, f"expected an object, got {type(value).__name__}")
    return value


def _clip(text: str) -> str:
    text = text.strip()
    if len(text) > SUMMARY_MAX_CHARS:
        return text[: SUMMARY_MAX_CHARS - 1] + "…"
    return text


# --------------------------------------------------------------------------- summaries


def _media_summary(label: str) -> Callable[[dict[str, Any]], str]:
    def summarize(payload: dict[str, Any]) -> str:
        return _opt_str(payload.get("caption")) or f"[{label}]"

    return summarize


def _audio_summary(payload: dict[str, Any]) -> str:
    return "[voice message]" if payload.get("voice") is True else "[audio]"


def _document_summary(payload: dict[str, Any]) -> str:
    # The filename tells an agent more than "[document]", so show it with any caption.
    head = f"[document: {filename}]" if (filename := _opt_str(payload.get("filename"))) else "[document]"
    caption = _opt_str(payload.get("caption"))
    if caption:
        return f"{head} {caption}" if filename else caption
    return head


def _location_summary(payload: dict[str, Any]) -> str:
    parts = [p for p in (_opt_str(payload.get("name")), _opt_str(payload.get("address"))) if p]
    if parts:
        return f"[location: {', '.join(parts)}]"
    lat, lon = payload.get("latitude"), payload.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        return f"[location: {lat}, {lon}]"
    return "[location]"


def _contact_name(card: dict[str, Any]) -> str | None:
    name = _opt_dict(card.get("name")) or {}
    formatted = _opt_str(name.get("formatted_name"))
    if formatted:
        return formatted
    pieces = [p for p in (_opt_str(name.get("first_name")), _opt_str(name.get("last_name"))) if p]
    return " ".join(pieces) or None


def _contacts_summary(cards: object) -> str:
    names = [n for n in (_contact_name(c) for c in _dict_list(cards)) if n]
    return f"[contacts: {', '.join(names)}]" if names else "[contacts]"


def _interactive_summary(payload: dict[str, Any]) -> str:
    kind = _opt_str(payload.get("type")) or ""
    reply = (_opt_dict(payload.get(kind)) if kind else None) or {}
    if kind in ("button_reply", "list_reply"):
        return _opt_str(reply.get("title")) or _opt_str(reply.get("id")) or "[interactive reply]"
    if kind == "nfm_reply":  # WhatsApp Flow completion
        return _opt_str(reply.get("body")) or "[flow response]"
    if kind == "call_permission_reply":
        response = _opt_str(reply.get("response"))
        return f"[call permission: {response}]" if response else "[call permission reply]"
    return f"[interactive: {kind}]" if kind else "[interactive]"


def _button_summary(payload: dict[str, Any]) -> str:
    return _opt_str(payload.get("text")) or _opt_str(payload.get("payload")) or "[button]"


def _reaction_summary(payload: dict[str, Any]) -> str:
    target = _opt_str(payload.get("message_id")) or "a message"
    emoji = _opt_str(payload.get("emoji"))
    # An empty/missing emoji is how Meta signals a removed reaction.
    return f"reacted {emoji} to {target}" if emoji else f"removed reaction from {target}"


def _order_summary(payload: dict[str, Any]) -> str:
    items = payload.get("product_items")
    count = len(items) if isinstance(items, list) else 0
    head = f"[order: {count} item{'' if count == 1 else 's'}]"
    note = _opt_str(payload.get("text"))
    return f"{head} {note}" if note and note.strip() else head


def _system_summary(payload: dict[str, Any]) -> str:
    body = _opt_str(payload.get("body"))
    if body:
        return body
    kind = _opt_str(payload.get("type"))
    return f"[system: {kind}]" if kind else "[system]"


_SUMMARIZERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "text": lambda p: _opt_str(p.get("body")) or "[empty text]",
    "image": _media_summary("image"),
    "video": _media_summary("video"),
    "audio": _audio_summary,
    "document": _document_summary,
    "sticker": lambda _p: "[sticker]",
    "location": _location_summary,
    "interactive": _interactive_summary,
    "button": _button_summary,
    "reaction": _reaction_summary,
    "order": _order_summary,
    "system": _system_summary,
    "unsupported": lambda _p: "[unsupported message]",
    "request_welcome": lambda _p: "[customer opened the chat]",
    "revoke": lambda _p: "[message deleted]",
}


def _summarize(msg: Mapping[str, Any], msg_type: str, depth: int = 0) -> str:
    """Short agent-facing text for one message-shaped object."""
    if msg_type == "contacts":  # the payload is a list, not an object
        return _contacts_summary(msg.get("contacts"))
    payload = _opt_dict(msg.get(msg_type)) or {}
    if msg_type == "edit":
        inner = _opt_dict(payload.get("message"))
        inner_type = _opt_str(inner.get("type")) if inner else None
        # depth guard: an edit of an edit is nonsense, but must not recurse forever
        if inner is not None and inner_type and depth < 2:
            return f"[edited] {_summarize(inner, inner_type, depth + 1)}"
        return "[message edited]"
    summarizer = _SUMMARIZERS.get(msg_type)
    if summarizer is not None:
        return summarizer(payload)
    return f"[{msg_type}]" if msg_type else "[message]"


# --------------------------------------------------------------------------- records


def _sender_contacts(contacts: list[dict[str, Any]], from_wa_id: str,
                     from_user_id: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(contact shown for the profile name, contact trusted for the sender's identity).

    The matching contact (by number or BSUID) is both. Without a match the name still falls back to
    the first contact, but identifiers only come from the sole contact of a message naming no sender."""
    for contact in contacts:
        if (from_wa_id and _opt_str(contact.get("wa_id")) == from_wa_id) or (
            from_user_id and _opt_str(contact.get("user_id")) == from_user_id
        ):
            return contact, contact
    first = contacts[0] if contacts else {}
    anonymous = not from_wa_id and not from_user_id and len(contacts) == 1
    return first, first if anonymous else {}


def _identity_change(msg: dict[str, Any], msg_type: str) -> IdentityChange | None:
    system = _opt_dict(msg.get("system")) if msg_type == "system" else None
    kind = _opt_str(system.get("type")) if system else None
    if system is None or kind not in ("user_changed_number", "user_changed_user_id"):
        return None
    return IdentityChange(
        kind=kind,
        new_wa_id=_opt_str(system.get("new_wa_id")) or _opt_str(system.get("wa_id")),
        new_user_id=_opt_str(system.get("new_user_id")) or _opt_str(system.get("user_id")),
        previous_user_id=_opt_str(system.get("previous_user_id")),
    )


@dataclass(frozen=True, slots=True)
class _ChangeCtx:
    """What every record of one `messages` change shares."""

    waba_id: str
    phone_number_id: str | None
    display_phone_number: str | None
    contacts: list[dict[str, Any]]
    now: Callable[[], datetime]


def _inbound(msg: dict[str, Any], ctx: _ChangeCtx) -> InboundMessage:
    from_wa_id = _opt_str(msg.get("from")) or ""
    from_user_id = _opt_str(msg.get("from_user_id"))
    shown, sender = _sender_contacts(ctx.contacts, from_wa_id, from_user_id)
    profile = _opt_dict(shown.get("profile")) or {}
    from_wa_id = from_wa_id or _opt_str(sender.get("wa_id")) or ""
    from_user_id = from_user_id or _opt_str(sender.get("user_id"))
    msg_type = _opt_str(msg.get("type")) or "unknown"
    return InboundMessage(
        wamid=_opt_str(msg["id"]) or "",
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        display_phone_number=ctx.display_phone_number,
        from_wa_id=from_wa_id,
        customer_name=_opt_str(profile.get("name")),
        type=msg_type,
        timestamp=_parse_timestamp(msg.get("timestamp"), ctx.now),
        summary=_clip(_summarize(msg, msg_type)),
        context=_opt_dict(msg.get("context")),
        referral=_opt_dict(msg.get("referral")),
        errors=_dict_list(msg.get("errors")),
        raw=msg,
        from_user_id=from_user_id,
        username=_opt_str((_opt_dict(sender.get("profile")) or {}).get("username")),
        identity_change=_identity_change(msg, msg_type),
    )


def _status(st: dict[str, Any], ctx: _ChangeCtx) -> StatusUpdate:
    return StatusUpdate(
        wamid=_opt_str(st["id"]) or "",
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        status=_opt_str(st.get("status")) or "unknown",
        timestamp=_parse_timestamp(st.get("timestamp"), ctx.now),
        recipient_id=_opt_str(st.get("recipient_id")),
        errors=_dict_list(st.get("errors")),
        conversation=_opt_dict(st.get("conversation")),
        pricing=_opt_dict(st.get("pricing")),
        raw=st,
    )


def _template_update(waba_id: str, value: dict[str, Any]) -> TemplateStatusUpdate:
    return TemplateStatusUpdate(
        waba_id=waba_id,
        event=_opt_str(value.get("event")) or "",
        message_template_id=_opt_str(value.get("message_template_id")),
        message_template_name=_opt_str(value.get("message_template_name")),
        message_template_language=_opt_str(value.get("message_template_language")),
        reason=_opt_str(value.get("reason")),
        raw=value,
    )


class _Collector:
    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.messages: list[InboundMessage] = []
        self.statuses: list[StatusUpdate] = []
        self.template_updates: list[TemplateStatusUpdate] = []
        self.other_changes: list[OtherChange] = []

    def messages_change(self, waba_id: str, value: dict[str, Any], path: str) -> None:
        metadata = _opt_dict(value.get("metadata")) or {}
        ctx = _ChangeCtx(
            waba_id=waba_id,
            phone_number_id=_opt_str(metadata.get("phone_number_id")),
            display_phone_number=_opt_str(metadata.get("display_phone_number")),
            contacts=_dict_list(value.get("contacts")),
            now=self.now,
        )
        messages: list[InboundMessage] = []
        statuses: list[StatusUpdate] = []
        if "messages" in value:
            for i, msg in enumerate(_require_list(value["messages"], f"{path}.messages")):
                msg_path = f"{path}.messages[{i}]"
                _require_id(_require_dict(msg, msg_path), msg_path)
                messages.append(_inbound(msg, ctx))
        if "statuses" in value:
            for i, st in enumerate(_require_list(value["statuses"], f"{path}.statuses")):
                st_path = f"{path}.statuses[{i}]"
                _require_id(_require_dict(st, st_path), st_path)
                statuses.append(_status(st, ctx))
        self.messages.extend(messages)
        self.statuses.extend(statuses)
        # Value-level `errors`, unknown arrays, or a change that yielded nothing:
        # keep the whole value so no information is dropped.
        if not (messages or statuses) or not set(value) <= _MESSAGES_VALUE_KEYS:
            self.other_changes.append(OtherChange(waba_id=waba_id, field="messages", value=value))

    def change(self, waba_id: str, change: object, path: str) -> None:
        change = _require_dict(change, path)
        field_name = change.get("field")
        if not isinstance(field_name, str):
            raise WebhookPayloadError(f"{path}.field", "missing or not a string")
        value = change.get("value")
        if field_name == "messages":
            self.messages_change(waba_id, _require_dict(value, f"{path}.value"), f"{path}.value")
        elif field_name == "message_template_status_update":
            self.template_updates.append(_template_update(waba_id, _require_dict(value, f"{path}.value")))
        else:
            self.other_changes.append(OtherChange(waba_id=waba_id, field=field_name, value=value))


# --------------------------------------------------------------------------- entry point


def parse_webhook(body: object, *, received_at: datetime | None = None) -> ParsedWebhook:
    """Parse a decoded webhook body.

    `received_at` is used as the timestamp of records whose own timestamp is
    missing or invalid (defaults to the current UTC time; pass it explicitly
    for deterministic results). Raises `WebhookPayloadError` only when the
    structure is unusable.
    """
    fallback_time: datetime | None = None

    def now() -> datetime:
        # Computed lazily and once, so all records of one body agree.
        nonlocal fallback_time
        if fallback_time is None:
            base = received_at if received_at is not None else datetime.now(UTC)
            fallback_time = base if base.tzinfo is not None else base.replace(tzinfo=UTC)
        return fallback_time

    root = _require_dict(body, "body")
    if "entry" not in root:
        raise WebhookPayloadError("entry", "missing")
    entries = _require_list(root["entry"], "entry")
    collector = _Collector(now)
    entry_ids: list[str] = []
    for i, raw_entry in enumerate(entries):
        path = f"entry[{i}]"
        entry = _require_dict(raw_entry, path)
        waba_id = _opt_str(entry.get("id"))
        if waba_id is None:
            raise WebhookPayloadError(f"{path}.id", "missing or not a string")
        entry_ids.append(waba_id)
        if "changes" not in entry:
            # Not the WABA shape (e.g. another `object`'s `messaging` entries): keep it whole.
            collector.other_changes.append(OtherChange(waba_id=waba_id, field="", value=entry))
            continue
        for j, change in enumerate(_require_list(entry["changes"], f"{path}.changes")):
            collector.change(waba_id, change, f"{path}.changes[{j}]")

    obj = root.get("object")
    return ParsedWebhook(
        object=obj if isinstance(obj, str) else None,
        messages=collector.messages,
        statuses=collector.statuses,
        template_updates=collector.template_updates,
        other_changes=collector.other_changes,
        entry_ids=entry_ids,
    )
