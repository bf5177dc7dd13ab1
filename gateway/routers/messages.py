"""Agents write to customers: replies inside a conversation (text, or a template to reopen the window)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from actors.directory import spawn
from config.messaging import MessageRequest, OutboundStart, TextReply
from config.models import holds_agent_licenses
from gateway.actor_calls import call_through_restart
from gateway.deps import InboxId, OrgMember, RuntimeDep, SessionDep, TxId
from gateway.errors import ApiError, conflict, field_error, forbidden, not_found
from gateway.outbound import (
    approved_template,
    enqueue,
    outbound_event,
    outbound_out,
    template_body,
    template_summary,
    waba_of_number,
    wake_sender,
    window_expires_at,
)
from gateway.paging import Page, Paging
from gateway.routers.inboxes import get_inbox
from gateway.routers.transactions import _visible_transaction
from gateway.schemas import OutboundMessageOut, OutboundStartOut
from store.customers import Identity, customers_by_id, resolve_customers
from store.tables import InboundMessage, Inbox, InboxAgent, OutboundMessage, Transaction
from store.types import utcnow

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["messages"])


async def _quoted_exists(session: AsyncSession, tx: Transaction, wamid: str) -> bool:
    inbound = await session.scalar(select(InboundMessage.id).where(
        InboundMessage.transaction_id == tx.id, InboundMessage.wamid == wamid))
    if inbound is not None:
        return True
    outbound = await session.scalar(select(OutboundMessage.id).where(
        OutboundMessage.transaction_id == tx.id, OutboundMessage.wamid == wamid))
    return outbound is not None


@router.post("/transactions/{tx_id}/messages", status_code=202, response_model=OutboundMessageOut)
async def send_message(tx_id: TxId, body: MessageRequest, ctx: OrgMember, session: SessionDep,
                       runtime: RuntimeDep) -> OutboundMessageOut:
    """Write to the customer in an assigned conversation: `text` (inside the 24-hour window; 409 outside it) or
    an approved `template` (the way back into a closed window), optionally quoting a message of the
    conversation with `reply_to` (its wamid). Queued (202) for the number's sender; the agent the conversation
    is assigned to only.
    """
    tx = await session.get(Transaction, tx_id)
    if tx is None or tx.org_id != ctx.org.id:
        raise not_found("transaction")
    user_id = ctx.user.id if ctx.user is not None else None
    if not (tx.state == "assigned" and tx.agent_id == user_id):
        # 403: the caller can never write here; 409: an agent of the inbox, but not now.
        serves = user_id is not None and await session.scalar(select(InboxAgent.user_id).where(
            InboxAgent.inbox_id == tx.inbox_id, InboxAgent.user_id == user_id)) is not None
        if not serves:
            raise forbidden("only the agent the conversation is assigned to may write in it")
        raise conflict(f"the conversation is {tx.state}"
                       + (" with another agent" if tx.state == "assigned" else "") + ", not assigned to you")
    inbox = await session.get(Inbox, tx.inbox_id)
    assert inbox is not None  # the foreign key guarantees it
    waba_id = await waba_of_number(session, inbox.phone_number_id)
    if body.reply_to is not None and not await _quoted_exists(session, tx, body.reply_to):
        raise field_error(("body", "reply_to"), "no message with this wamid in the conversation")
    customer = (await customers_by_id(session, [tx.customer_id])).get(tx.customer_id, {})
    if not customer.get("wa_id") and not customer.get("user_id"):
        raise conflict("the customer sent no phone number and no user id: there is no one to write to")
    if isinstance(body, TextReply):
        expires = await window_expires_at(session, ctx.org.id, inbox.phone_number_id, tx.customer_id)
        if expires is None or expires <= utcnow():
            raise conflict("the customer's 24-hour window is closed (their last message is older than 24 h): "
                           "send an approved template instead ({\"type\": \"template\", ...})")
        msg_type, content, summary = "text", {"body": body.text, "preview_url": False}, body.text
    else:
        template = await approved_template(session, ctx.org.id, waba_id, body.template, ("body", "template"))
        msg_type, content = "template", template_body(body.template)
        summary = template_summary(template, body.template)
    row = enqueue(session, org_id=ctx.org.id, waba_id=waba_id, phone_number_id=inbox.phone_number_id,
                  inbox_id=inbox.id, transaction_id=tx.id, agent_id=user_id, to_wa_id=customer.get("wa_id"),
                  to_user_id=customer.get("user_id"), msg_type=msg_type, content=content, summary=summary,
                  reply_to=body.reply_to)
    await session.commit()
    wake_sender(runtime, inbox.phone_number_id)
    if user_id is not None:
        spawn(runtime.routing.push_event(ctx.org.id, user_id, "message", outbound_event(row)),
              f"echo message {row.id} to agent {user_id}")
    return outbound_out(row)


@router.post("/inboxes/{inbox_id}/outbound", status_code=202, response_model=OutboundStartOut)
async def start_conversation(inbox_id: InboxId, body: OutboundStart, ctx: OrgMember, session: SessionDep,
                             runtime: RuntimeDep) -> OutboundStartOut:
    """WhatsApp Back: an agent of the inbox writes first, with an approved template."""
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    if ctx.user is None:
        raise forbidden("the platform admin cannot act as an agent")
    user_id = ctx.user.id
    member = await session.scalar(select(InboxAgent.user_id).where(InboxAgent.inbox_id == inbox.id,
                                                                   InboxAgent.user_id == user_id))
    if member is None or not holds_agent_licenses(ctx.user.licenses):
        raise forbidden("only a licensed agent of this inbox may start a conversation on it")
    waba_id = await waba_of_number(session, inbox.phone_number_id)
    template = await approved_template(session, ctx.org.id, waba_id, body.template, ("body", "template"))
    # The customer by phone number or BSUID: the known one, or a new customers row.
    (customer,) = await resolve_customers(session, ctx.org.id, [Identity(user_id=body.to.user_id,
                                                                         wa_id=body.to.wa_id)])
    assert customer is not None  # the request names exactly one identifier
    await session.commit()  # the customer exists before the inbox actor opens a conversation with them
    opened = await call_through_restart(lambda: runtime.routing.inbox(ctx.org.id, inbox_id), "open_outbound",
                                        customer.as_dict(), user_id,
                                        unavailable="the inbox's actor is restarting; retry shortly")
    if opened["status"] != 200:
        raise ApiError(opened["status"], opened["detail"])
    row = enqueue(session, org_id=ctx.org.id, waba_id=waba_id, phone_number_id=inbox.phone_number_id,
                  inbox_id=inbox.id, transaction_id=opened["transaction_id"], agent_id=user_id,
                  to_wa_id=customer.wa_id, to_user_id=customer.user_id, msg_type="template",
                  content=template_body(body.template), summary=template_summary(template, body.template),
                  reply_to=None)
    await session.commit()
    wake_sender(runtime, inbox.phone_number_id)
    spawn(runtime.routing.push_event(ctx.org.id, user_id, "message", outbound_event(row)),
          f"echo message {row.id} to agent {user_id}")
    return OutboundStartOut(transaction_id=opened["transaction_id"], reused=opened["reused"],
                            message=outbound_out(row))


@router.get("/transactions/{tx_id}/outbound", response_model=Page[OutboundMessageOut])
async def list_outbound(tx_id: TxId, ctx: OrgMember, session: SessionDep,
                        paging: Paging) -> Page[OutboundMessageOut]:
    """The conversation's messages to the customer with their delivery state, oldest first."""
    tx = await _visible_transaction(session, ctx, tx_id)
    query = select(OutboundMessage).where(OutboundMessage.transaction_id == tx.id)
    rows = (await session.scalars(paging.oldest_first(query, OutboundMessage.id))).all()
    return paging.page(rows, lambda r: (r.id,), outbound_out)



