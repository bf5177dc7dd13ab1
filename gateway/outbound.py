"""Putting a message in the outbox: the 24-hour window, approved templates, the Graph body, the wake-up.

Shared by agents' replies and agent-initiated conversations (WhatsApp Back). A message is stored
(state `queued`) and committed by the caller before the number's sender actor is woken, so an
accepted message survives any crash after the 202.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from actors.directory import spawn
from config.messaging import TemplateRef
from gateway.errors import ApiError, field_error
from gateway.runtime import Runtime
from gateway.schemas import DeliveryErrorOut, MessageOut, OutboundMessageOut
from store.customers import aliases_of
from store.outbox import new_idempotency_key
from store.tables import InboundMessage, MessageTemplate, OutboundMessage, PhoneNumber

# Meta's customer-service window: free-form messages within 24 h of the customer's last message.
SERVICE_WINDOW = timedelta(hours=24)


async def window_expires_at(session: AsyncSession, org_id: int, phone_number_id: str,
                            customer_id: int) -> datetime | None:
    """When the customer's window on this number closes (None: they never wrote to it).

    Per customer, whichever identifier (phone number, BSUID) their messages came with, including
    customers later merged into this one."""
    ids = (await aliases_of(session, [customer_id])).get(customer_id, [customer_id])
    last = await session.scalar(select(func.max(InboundMessage.sent_at)).where(
        InboundMessage.org_id == org_id, InboundMessage.phone_number_id == phone_number_id,
        InboundMessage.customer_id.in_(ids)))
    if last is None:
        return None
    if isinstance(last, str):  # SQLite's max() hands back the stored text
        last = datetime.fromisoformat(last)
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return last + SERVICE_WINDOW


async def waba_of_number(session: AsyncSession, phone_number_id: str) -> str:
    waba_id = await session.scalar(select(PhoneNumber.waba_id).where(PhoneNumber.phone_number_id == phone_number_id))
    if waba_id is None:
        raise ApiError(409, f"number {phone_number_id} is not known; refresh the WhatsApp account")
    return str(waba_id)


async def approved_template(session: AsyncSession, org_id: int, waba_id: str, ref: TemplateRef,
                            at: tuple[str | int, ...]) -> MessageTemplate:
    """The APPROVED template `ref` names, with its parameters counted (422 naming the field otherwise)."""
    template = await session.scalar(select(MessageTemplate).where(
        MessageTemplate.org_id == org_id, MessageTemplate.waba_id == waba_id, MessageTemplate.name == ref.name,
        MessageTemplate.language == ref.language))
    if template is None:
        raise field_error((*at, "name"), f"no template {ref.name} in {ref.language} on WABA {waba_id}")
    if template.status != "APPROVED":
        raise field_error((*at, "name"), f"template {ref.name} ({ref.language}) is {template.status}, "
                                         "only APPROVED templates can be sent")
    if len(ref.parameters) != template.body_params:
        raise field_error((*at, "parameters"), f"template {ref.name} needs {template.body_params} body "
                                               f"parameter(s), {len(ref.parameters)} given")
    if len(ref.header_parameters) != template.header_params:
        raise field_error((*at, "header_parameters"), f"template {ref.name} needs {template.header_params} header "
                                                      f"parameter(s), {len(ref.header_parameters)} given")
    return template


def template_body(ref: TemplateRef) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if ref.header_parameters:
        components.append({"type": "header", "parameters": [{"type": "text", "text": p}
                                                            for p in ref.header_parameters]})
    if ref.parameters:
        components.append({"type": "body", "parameters": [{"type": "text", "text": p} for p in ref.parameters]})
    body: dict[str, Any] = {"name": ref.name, "language": {"code": ref.language}}
    if components:
        body["components"] = components
    return body


def template_summary(template: MessageTemplate, ref: TemplateRef) -> str:
    text = next((c.get("text") for c in template.components
                 if isinstance(c, dict) and str(c.get("type", "")).upper() == "BODY"), None) or ref.name
    for number, value in enumerate(ref.parameters, start=1):
        text = text.replace(f"{{{{{number}}}}}", value)
    return str(text)


def graph_payload(to_wa_id: str | None, to_user_id: str | None, msg_type: str, content: dict[str, Any],
                  reply_to: str | None) -> dict[str, Any]:
    """The body of POST /{phone_number_id}/messages: to the phone number when known, else the BSUID."""
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if to_wa_id:
        payload["to"] = to_wa_id
    else:
        payload["recipient"] = to_user_id
    payload["type"] = msg_type
    payload[msg_type] = content
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


def enqueue(session: AsyncSession, *, org_id: int, waba_id: str, phone_number_id: str, inbox_id: int | None,
            transaction_id: int | None, agent_id: int | None, to_wa_id: str | None, to_user_id: str | None,
            msg_type: str, content: dict[str, Any], summary: str, reply_to: str | None) -> OutboundMessage:
    row = OutboundMessage(
        org_id=org_id, waba_id=waba_id, phone_number_id=phone_number_id, inbox_id=inbox_id,
        transaction_id=transaction_id, agent_id=agent_id, to_wa_id=to_wa_id, to_user_id=to_user_id, type=msg_type,
        summary=summary, payload=graph_payload(to_wa_id, to_user_id, msg_type, content, reply_to),
        reply_to=reply_to, idempotency_key=new_idempotency_key(), state="queued", attempts=0)
    session.add(row)
    return row


def wake_sender(runtime: Runtime, phone_number_id: str) -> None:
    """Nudge the number's sender (fire-and-forget: it also polls the outbox, nothing is lost)."""
    spawn(runtime.routing.sender(phone_number_id).wake(), f"wake sender {phone_number_id}")


def outbound_out(row: OutboundMessage) -> OutboundMessageOut:
    error = None
    if row.error_code is not None or row.error_title:
        error = DeliveryErrorOut(code=row.error_code, title=row.error_title, details=row.error_details)
    return OutboundMessageOut(
        id=row.id, state=row.state, transaction_id=row.transaction_id, inbox_id=row.inbox_id, agent_id=row.agent_id,
        type=row.type, summary=row.summary, to_wa_id=row.to_wa_id, to_user_id=row.to_user_id, wamid=row.wamid,
        reply_to=row.reply_to, attempts=row.attempts, status_at=row.status_at, error=error, created_at=row.created_at)


def outbound_event(row: OutboundMessage) -> dict[str, Any]:
    """The echo in the agent's event stream (`message` with direction `outbound`)."""
    return {"transaction_id": row.transaction_id, "inbox_id": row.inbox_id,
            "message": {**outbound_out(row).model_dump(mode="json"), "direction": "outbound"}}


def conversation_order(message: MessageOut) -> tuple[datetime, int, int]:
    """Where a message stands in its conversation's time order.

    A reply carries our own clock's time. A customer's message carries Meta's timestamp, which has whole
    seconds: it was written within that second, and not after we received it, so it stands at the earlier
    of the two. A reply written in the same second before the customer's message was received stays ahead
    of it (by Meta's second alone, the customer's message would jump ahead); a message Meta redelivers
    days later stays where it was written.
    """
    at = message.sent_at
    if message.direction == "inbound":
        at = min(message.received_at, message.sent_at + timedelta(seconds=1))
    return at, 0 if message.direction == "inbound" else 1, message.id


async def outbound_messages_of(session: AsyncSession, transaction_id: int) -> list[MessageOut]:
    """The conversation's replies as entries of its message list."""
    rows = (await session.scalars(select(OutboundMessage).where(OutboundMessage.transaction_id == transaction_id)
                                  .order_by(OutboundMessage.id))).all()
    return [MessageOut(id=r.id, direction="outbound", wamid=r.wamid, type=r.type, summary=r.summary,
                       sent_at=r.created_at, received_at=r.created_at, state=r.state, agent_id=r.agent_id,
                       reply_to=r.reply_to, error=outbound_out(r).error) for r in rows]
