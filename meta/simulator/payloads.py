"""Builders of WhatsApp Cloud API webhook bodies, in the shapes Meta documents.

Every webhook Meta sends is an envelope::

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA id>", "changes": [{"value": {...}, "field": "messages"}]}]}

Three layers of helpers, each usable on its own:

* message objects — ``text_message(from_wa_id, "hi")``, ``image_message(...)``, ... one per inbound
  type (text, image, audio, video, document, sticker, location, contacts, interactive button/list
  replies, button, reaction, order, system, unsupported), with optional ``context`` (see
  ``reply_context``, ``forwarded_context``, ``product_context``) and ``referral`` (``ad_referral``);
  ``status(...)`` builds a delivery status object;
* values — ``messages_value(...)`` / ``statuses_value(...)`` put message or status objects under
  ``metadata`` and ``contacts``;
* bodies — ``envelope(waba_id, [change(value)])``, or the one-call conveniences
  ``inbound_message(...)``, ``inbound_messages(...)`` (a batch), ``status_update(...)`` and
  ``template_status_update(...)``.

Message ids are ``wamid.`` + base64, timestamps strings of epoch seconds, as Meta sends them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meta.simulator.state import new_wamid

OBJECT = "whatsapp_business_account"
ERROR_DOCS_URL = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"

Json = dict[str, Any]


def _ts(timestamp: float | int | None) -> str:
    return str(int(time.time() if timestamp is None else timestamp))


def new_media_id() -> str:
    """Media ids are long decimal strings."""
    return str(secrets.randbelow(9 * 10**15) + 10**15)


def _sha256() -> str:
    # Meta sends the base64 SHA-256 of the media file; here of random bytes standing for it.
    return base64.b64encode(hashlib.sha256(secrets.token_bytes(32)).digest()).decode()


# ---- envelope --------------------------------------------------------------------------------------


def change(value: Json, field: str = "messages") -> Json:
    return {"value": value, "field": field}


def envelope(waba_id: str, changes: Sequence[Json], time_: int | None = None) -> Json:
    """The outer body; `time_` is set by Meta on some fields (e.g. template status updates)."""
    entry: Json = {"id": waba_id, "changes": list(changes)}
    if time_ is not None:
        entry["time"] = time_
    return {"object": OBJECT, "entry": [entry]}


def metadata(phone_number_id: str, display_phone_number: str) -> Json:
    return {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id}


def contact(wa_id: str | None, name: str, *, user_id: str | None = None, username: str | None = None) -> Json:
    """The sender's contact. Since 2026 Meta adds the business-scoped user id (`user_id`, e.g.
    ``US.13491208655302741918``) and, for users who adopted one, `profile.username`; such a user may
    share no phone number, and then `wa_id` is absent."""
    profile: Json = {"name": name}
    if username is not None:
        profile["username"] = username
    entry: Json = {"profile": profile}
    if wa_id is not None:
        entry["wa_id"] = wa_id
    if user_id is not None:
        entry["user_id"] = user_id
    return entry


def sender_of(message: Json) -> tuple[str | None, str | None]:
    """(phone number, business-scoped user id) of an inbound message object."""
    return message.get("from"), message.get("from_user_id")


def messages_value(phone_number_id: str, display_phone_number: str, messages: Sequence[Json],
                   contacts: Sequence[Json] | None = None) -> Json:
    """The `value` of a `messages` change carrying inbound messages.

    Without `contacts`, one contact per distinct sender is made with the wa_id as the name.
    """
    if contacts is None:
        seen: dict[tuple[str | None, str | None], Json] = {}
        for message in messages:
            wa_id, user_id = sender_of(message)
            seen.setdefault((wa_id, user_id), contact(wa_id, wa_id or user_id or "", user_id=user_id))
        contacts = list(seen.values())
    return {
        "messaging_product": "whatsapp",
        "metadata": metadata(phone_number_id, display_phone_number),
        "contacts": list(contacts),
        "messages": list(messages),
    }


def statuses_value(phone_number_id: str, display_phone_number: str, statuses: Sequence[Json]) -> Json:
    return {
        "messaging_product": "whatsapp",
        "metadata": metadata(phone_number_id, display_phone_number),
        "statuses": list(statuses),
    }


# ---- context and referral --------------------------------------------------------------------------


def reply_context(from_number: str, message_id: str) -> Json:
    """The customer replied to (quoted) message `message_id` sent by business number `from_number`."""
    return {"from": from_number, "id": message_id}


def forwarded_context(frequently: bool = False) -> Json:
    # Meta sets `frequently_forwarded` instead of `forwarded` past five forwards.
    return {"frequently_forwarded": True} if frequently else {"forwarded": True}


def product_context(from_number: str, message_id: str, catalog_id: str, product_retailer_id: str) -> Json:
    """The customer asked about a product (the "Message business" button of a product)."""
    return {"from": from_number, "id": message_id,
            "referred_product": {"catalog_id": catalog_id, "product_retailer_id": product_retailer_id}}


def ad_referral(source_url: str = "https://fb.me/ad", source_id: str = "120200000000000000",
                headline: str = "Chat with us", body: str = "Tap to message us on WhatsApp",
                media_type: str = "image", media_url: str | None = "https://scontent.example/ad.jpg",
                thumbnail_url: str | None = None, ctwa_clid: str | None = None,
                source_type: str = "ad") -> Json:
    """A click-to-WhatsApp ad referral, attached to the customer's first message."""
    referral: Json = {"source_url": source_url, "source_id": source_id, "source_type": source_type,
                      "headline": headline, "body": body, "media_type": media_type}
    if media_url is not None:
        referral["image_url" if media_type == "image" else "video_url"] = media_url
    if thumbnail_url is not None:
        referral["thumbnail_url"] = thumbnail_url
    referral["ctwa_clid"] = ctwa_clid or secrets.token_urlsafe(24)
    return referral


# ---- inbound message objects -----------------------------------------------------------------------


def message(from_wa_id: str | None, type_: str, content: Any | None = None, *, context: Json | None = None,
            referral: Json | None = None, errors: list[Json] | None = None, message_id: str | None = None,
            timestamp: float | int | None = None, from_user_id: str | None = None) -> Json:
    """One inbound message object; `content` goes under the key named by the type.

    `from_user_id` is the sender's business-scoped user id; `from_wa_id=None` omits `from` (a
    username user who shares no phone number)."""
    msg: Json = {}
    if from_wa_id is not None:
        msg["from"] = from_wa_id
    if from_user_id is not None:
        msg["from_user_id"] = from_user_id
    msg.update({"id": message_id or new_wamid(), "timestamp": _ts(timestamp)})
    if context is not None:
        msg["context"] = context
    if referral is not None:
        msg["referral"] = referral
    msg["type"] = type_
    if content is not None:
        msg[type_] = content
    if errors is not None:
        msg["errors"] = errors
    return msg


def text_message(from_wa_id: str, body: str = "Hello", **common: Any) -> Json:
    return message(from_wa_id, "text", {"body": body}, **common)


def _media(mime_type: str, id_: str | None, sha256: str | None, **extra: Any) -> Json:
    content: Json = {"mime_type": mime_type, "sha256": sha256 or _sha256(), "id": id_ or new_media_id()}
    content.update({k: v for k, v in extra.items() if v is not None})
    return content


def image_message(from_wa_id: str, caption: str | None = None, mime_type: str = "image/jpeg",
                  media_id: str | None = None, sha256: str | None = None, **common: Any) -> Json:
    return message(from_wa_id, "image", _media(mime_type, media_id, sha256, caption=caption), **common)


def audio_message(from_wa_id: str, voice: bool = True, mime_type: str = "audio/ogg; codecs=opus",
                  media_id: str | None = None, sha256: str | None = None, **common: Any) -> Json:
    """`voice` is true for a recorded voice note, false for a forwarded audio file."""
    return message(from_wa_id, "audio", _media(mime_type, media_id, sha256, voice=voice), **common)


def video_message(from_wa_id: str, caption: str | None = None, mime_type: str = "video/mp4",
                  media_id: str | None = None, sha256: str | None = None, **common: Any) -> Json:
    return message(from_wa_id, "video", _media(mime_type, media_id, sha256, caption=caption), **common)


def document_message(from_wa_id: str, filename: str = "document.pdf", caption: str | None = None,
                     mime_type: str = "application/pdf", media_id: str | None = None,
                     sha256: str | None = None, **common: Any) -> Json:
    content = _media(mime_type, media_id, sha256, caption=caption, filename=filename)
    return message(from_wa_id, "document", content, **common)


def sticker_message(from_wa_id: str, animated: bool = False, mime_type: str = "image/webp",
                    media_id: str | None = None, sha256: str | None = None, **common: Any) -> Json:
    return message(from_wa_id, "sticker", _media(mime_type, media_id, sha256, animated=animated), **common)


def location_message(from_wa_id: str, latitude: float = 38.7223, longitude: float = -9.1393,
                     name: str | None = None, address: str | None = None, url: str | None = None,
                     **common: Any) -> Json:
    content: Json = {"latitude": latitude, "longitude": longitude}
    content.update({k: v for k, v in {"name": name, "address": address, "url": url}.items() if v is not None})
    return message(from_wa_id, "location", content, **common)


def contact_card(formatted_name: str = "Jane Doe", phone: str = "+15551234567",
                 wa_id: str | None = None, first_name: str | None = None, last_name: str | None = None,
                 email: str | None = None, company: str | None = None) -> Json:
    """One vCard-like entry of a `contacts` message."""
    first, _, last = formatted_name.partition(" ")
    card: Json = {
        "name": {"formatted_name": formatted_name, "first_name": first_name or first,
                 **({"last_name": last_name or last} if (last_name or last) else {})},
        "phones": [{"phone": phone, "type": "CELL",
                    **({"wa_id": wa_id} if wa_id else {"wa_id": phone.lstrip("+").replace(" ", "")})}],
    }
    if email is not None:
        card["emails"] = [{"email": email, "type": "WORK"}]
    if company is not None:
        card["org"] = {"company": company}
    return card


def contacts_message(from_wa_id: str, cards: Sequence[Json] | None = None, **common: Any) -> Json:
    return message(from_wa_id, "contacts", list(cards) if cards is not None else [contact_card()], **common)


def button_reply_message(from_wa_id: str, button_id: str = "yes", title: str = "Yes",
                         context: Json | None = None, **common: Any) -> Json:
    """Tap on a reply button of an interactive message the business sent (context points at it)."""
    content = {"type": "button_reply", "button_reply": {"id": button_id, "title": title}}
    return message(from_wa_id, "interactive", content, context=context or _business_context(), **common)


def list_reply_message(from_wa_id: str, row_id: str = "row_1", title: str = "Option 1",
                       description: str | None = None, context: Json | None = None, **common: Any) -> Json:
    reply: Json = {"id": row_id, "title": title}
    if description is not None:
        reply["description"] = description
    content = {"type": "list_reply", "list_reply": reply}
    return message(from_wa_id, "interactive", content, context=context or _business_context(), **common)


def button_message(from_wa_id: str, text: str = "Talk to an agent", payload: str | None = None,
                   context: Json | None = None, **common: Any) -> Json:
    """Tap on a quick-reply button of a template message."""
    content = {"payload": payload if payload is not None else text, "text": text}
    return message(from_wa_id, "button", content, context=context or _business_context(), **common)


def reaction_message(from_wa_id: str, message_id_reacted: str, emoji: str | None = "\N{THUMBS UP SIGN}",
                     **common: Any) -> Json:
    """A reaction to one of the business's messages; Meta omits `emoji` when a reaction is removed."""
    content: Json = {"message_id": message_id_reacted}
    if emoji is not None:
        content["emoji"] = emoji
    return message(from_wa_id, "reaction", content, **common)


def order_message(from_wa_id: str, catalog_id: str = "1234567890",
                  items: Sequence[Json] | None = None, text: str | None = None, **common: Any) -> Json:
    product_items = list(items) if items is not None else [
        {"product_retailer_id": "sku-1", "quantity": 1, "item_price": 9.99, "currency": "USD"}]
    content: Json = {"catalog_id": catalog_id, "product_items": product_items}
    if text is not None:
        content["text"] = text
    return message(from_wa_id, "order", content, **common)


def system_message(from_wa_id: str | None, new_wa_id: str | None, body: str | None = None,
                   system_type: str = "user_changed_number", *, user_id: str | None = None,
                   previous_user_id: str | None = None, **common: Any) -> Json:
    """The customer changed their number (`user_changed_number`, sent from the old number, `wa_id` the
    new one) or their business-scoped user id (`user_changed_user_id`: `user_id` the new one,
    `previous_user_id` the old). Meta sends no contacts with system messages."""
    content: Json = {"body": body or f"User {from_wa_id} changed from {from_wa_id} to {new_wa_id}"}
    if new_wa_id is not None:
        content["wa_id"] = new_wa_id
    if user_id is not None:
        content["user_id"] = user_id
    if previous_user_id is not None:
        content["previous_user_id"] = previous_user_id
    content["type"] = system_type
    return message(from_wa_id, "system", content, **common)


def error_object(code: int, title: str, details: str | None = None) -> Json:
    error: Json = {"code": code, "title": title, "message": title}
    if details is not None:
        error["error_data"] = {"details": details}
    error["href"] = ERROR_DOCS_URL
    return error


def unsupported_message(from_wa_id: str, errors: list[Json] | None = None, **common: Any) -> Json:
    """A message type Cloud API cannot deliver to webhooks (e.g. polls): only `errors` is given."""
    errors = errors or [
        error_object(131051, "Message type unknown", "Message type is currently not supported.")]
    return message(from_wa_id, "unsupported", None, errors=errors, **common)


def _business_context() -> Json:
    # Replies to interactive/template messages always reference the business message they answer.
    return {"from": "15550000000", "id": new_wamid()}


MESSAGE_BUILDERS: dict[str, Callable[..., Json]] = {
    "text": text_message,
    "image": image_message,
    "audio": audio_message,
    "video": video_message,
    "document": document_message,
    "sticker": sticker_message,
    "location": location_message,
    "contacts": contacts_message,
    "button_reply": button_reply_message,
    "list_reply": list_reply_message,
    "interactive": button_reply_message,
    "button": button_message,
    "reaction": reaction_message,
    "order": order_message,
    "system": system_message,
    "unsupported": unsupported_message,
}


def build_message(from_wa_id: str | None, type_: str = "text", /, **fields: Any) -> Json:
    """A message object of `type_` (a key of MESSAGE_BUILDERS) with builder-specific `fields`."""
    try:
        builder = MESSAGE_BUILDERS[type_]
    except KeyError:
        known = sorted(MESSAGE_BUILDERS)
        raise ValueError(f"unknown inbound message type {type_!r}; one of {known}") from None
    return builder(from_wa_id, **fields)


# ---- whole bodies ----------------------------------------------------------------------------------


def inbound_message(waba_id: str, phone_number_id: str, display_phone_number: str, from_wa_id: str | None,
                    name: str, /, type: str = "text", *, user_id: str | None = None, username: str | None = None,
                    **fields: Any) -> Json:
    """A complete webhook body with one inbound message from customer `from_wa_id` called `name`.

    `fields` go to the type's builder (e.g. ``body=`` for text, ``caption=`` for image, ``name=``
    for a location's place name -- hence the positional-only contact name) and may include the
    common ``context``, ``referral``, ``message_id`` and ``timestamp``. `user_id` (business-scoped
    user id) is sent as the message's `from_user_id` and the contact's `user_id`, `username` in the
    contact's profile; `from_wa_id=None` sends neither `from` nor `wa_id`.
    """
    msg = build_message(from_wa_id, type, from_user_id=user_id, **fields)
    sender = contact(from_wa_id, name, user_id=user_id, username=username)
    value = messages_value(phone_number_id, display_phone_number, [msg], [sender])
    return envelope(waba_id, [change(value)])


def inbound_messages(waba_id: str, phone_number_id: str, display_phone_number: str,
                     messages: Sequence[Json], names: dict[str, str] | None = None) -> Json:
    """One body batching several message objects (Meta batches under load); `names` maps wa_id -> name."""
    names = names or {}
    senders = list(dict.fromkeys(sender_of(m) for m in messages))
    contacts = [contact(wa_id, names.get(wa_id or user_id or "", wa_id or user_id or ""), user_id=user_id)
                for wa_id, user_id in senders]
    value = messages_value(phone_number_id, display_phone_number, messages, contacts)
    return envelope(waba_id, [change(value)])


def status(message_id: str, recipient_id: str, status_: str = "delivered", *,
           timestamp: float | int | None = None, conversation_id: str | None = None,
           category: str = "service", origin: str | None = None, with_pricing: bool | None = None,
           errors: list[Json] | None = None, biz_opaque_callback_data: str | None = None) -> Json:
    """A status object: sent / delivered / read / played / failed.

    Meta attaches `conversation` and `pricing` to sent and delivered statuses (billing info);
    `failed` carries `errors`.
    """
    if status_ not in {"sent", "delivered", "read", "played", "failed", "deleted"}:
        raise ValueError(f"unknown status {status_!r}")
    ts = _ts(timestamp)
    obj: Json = {"id": message_id, "status": status_, "timestamp": ts, "recipient_id": recipient_id}
    if biz_opaque_callback_data is not None:
        obj["biz_opaque_callback_data"] = biz_opaque_callback_data
    if with_pricing is None:
        with_pricing = status_ in {"sent", "delivered"}
    if with_pricing:
        conversation: Json = {"id": conversation_id or secrets.token_hex(16),
                              "origin": {"type": origin or category}}
        if status_ == "sent":
            conversation["expiration_timestamp"] = str(int(ts) + 24 * 60 * 60)
        obj["conversation"] = conversation
        free = category == "service"
        obj["pricing"] = {"billable": not free, "pricing_model": "PMP", "category": category,
                          "type": "free_customer_service" if free else "regular"}
    if status_ == "failed":
        obj["errors"] = errors or [error_object(131026, "Message undeliverable",
                                                "Message failed to send because of an unknown error.")]
    return obj


def status_update(waba_id: str, phone_number_id: str, display_phone_number: str, message_id: str,
                  recipient_id: str, status_: str = "delivered", **fields: Any) -> Json:
    """A complete webhook body with one status (`fields` as for `status`)."""
    obj = status(message_id, recipient_id, status_, **fields)
    return envelope(waba_id, [change(statuses_value(phone_number_id, display_phone_number, [obj]))])


def statuses_update(waba_id: str, phone_number_id: str, display_phone_number: str,
                    statuses: Iterable[Json]) -> Json:
    return envelope(waba_id, [change(statuses_value(phone_number_id, display_phone_number, list(statuses)))])


def template_status_update(waba_id: str, template_id: str, name: str, language: str,
                           event: str = "APPROVED", reason: str | None = None,
                           time_: int | None = None) -> Json:
    """`message_template_status_update` field: APPROVED, REJECTED, PENDING_DELETION, DISABLED, ..."""
    value: Json = {
        "event": event,
        # Meta sends the template id as a JSON number.
        "message_template_id": int(template_id) if template_id.isdigit() else template_id,
        "message_template_name": name,
        "message_template_language": language,
        "reason": reason if reason is not None else "NONE",
    }
    return envelope(waba_id, [change(value, "message_template_status_update")],
                    time_=int(time.time()) if time_ is None else time_)
