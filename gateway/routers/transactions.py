"""Transactions (customer conversations): listing, detail, audit trail, and the agent's actions."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from config.models import TransferRequest
from gateway.actor_calls import call_through_restart
from gateway.deps import (
    AgentFilter,
    InboxFilter,
    InboxId,
    OrgAccess,
    OrgActing,
    OrgMember,
    RuntimeDep,
    SessionDep,
    Supervisor,
    TxId,
)
from gateway.errors import ApiError, field_error, forbidden, not_found
from gateway.outbound import conversation_order, outbound_messages_of, window_expires_at
from gateway.paging import Page, Paging
from gateway.routers.inboxes import get_inbox
from gateway.runtime import Runtime
from gateway.schemas import (
    CustomerOut,
    MessageOut,
    QueueEntryOut,
    TransactionDetailOut,
    TransactionEventOut,
    TransactionOut,
)
from store.customers import customers_by_id
from store.tables import InboundMessage, Inbox, InboxAgent, Transaction, TransactionEvent

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["transactions"])

State = Literal["queued", "offered", "assigned", "closed"]


async def _customers(session: AsyncSession, txs: Sequence[Transaction]) -> dict[int, CustomerOut]:
    """The customer of each transaction's customer id, as it is known now (merged ones as their survivor)."""
    return {cid: CustomerOut(**customer)
            for cid, customer in (await customers_by_id(session, {tx.customer_id for tx in txs})).items()}


def transaction_out(tx: Transaction, customer: CustomerOut) -> TransactionOut:
    return TransactionOut(
        id=tx.id, org_id=tx.org_id, inbox_id=tx.inbox_id, customer=customer, state=tx.state,
        agent_id=tx.agent_id, offered_to=tx.offered_to, offer_expires_at=tx.offer_expires_at,
        waiting_since=tx.waiting_since, assigned_at=tx.assigned_at, closed_at=tx.closed_at, created_at=tx.created_at,
    )


async def _served_inboxes(session: AsyncSession, ctx: OrgAccess) -> list[int] | None:
    """None for supervisors (every inbox); otherwise the inboxes the agent serves."""
    if ctx.is_supervisor or ctx.user is None:
        return None
    return list((await session.scalars(select(InboxAgent.inbox_id).where(InboxAgent.user_id == ctx.user.id))).all())


async def _visible_transaction(session: AsyncSession, ctx: OrgAccess, tx_id: int) -> Transaction:
    tx = await session.get(Transaction, tx_id)
    if tx is None or tx.org_id != ctx.org_id:
        raise not_found("transaction")
    served = await _served_inboxes(session, ctx)
    if served is not None and tx.inbox_id not in served and tx.agent_id != ctx.user.id:  # type: ignore[union-attr]
        raise forbidden("only supervisors and the inbox's agents may see this transaction")
    return tx


@router.get("/transactions", response_model=Page[TransactionOut])
async def list_transactions(
    ctx: OrgMember, session: SessionDep, paging: Paging,
    inbox_id: InboxFilter = None, state: State | None = None, agent_id: AgentFilter = None,
) -> Page[TransactionOut]:
    """Newest first (by id). Agents see the transactions of the inboxes they serve."""
    query = select(Transaction).where(Transaction.org_id == ctx.org.id)
    after = paging.after([int])
    if after is not None:
        query = query.where(Transaction.id < after[0])
    served = await _served_inboxes(session, ctx)
    if served is not None:
        query = query.where(Transaction.inbox_id.in_(served))
    if inbox_id is not None:
        query = query.where(Transaction.inbox_id == inbox_id)
    if state is not None:
        query = query.where(Transaction.state == state)
    if agent_id is not None:
        query = query.where(Transaction.agent_id == agent_id)
    rows = (await session.scalars(query.order_by(Transaction.id.desc()).limit(paging.limit + 1))).all()
    customers = await _customers(session, rows)
    return paging.page(rows, lambda tx: (tx.id,), lambda tx: transaction_out(tx, customers[tx.customer_id]))


async def _conversation(session: AsyncSession, tx_id: int) -> list[MessageOut]:
    messages = (await session.scalars(
        select(InboundMessage).where(InboundMessage.transaction_id == tx_id)
        .order_by(InboundMessage.sent_at, InboundMessage.id)
    )).all()
    shown = [MessageOut(id=m.id, wamid=m.wamid, type=m.type, summary=m.summary, sent_at=m.sent_at,
                        received_at=m.received_at) for m in messages]
    shown += await outbound_messages_of(session, tx_id)
    # One conversation in time order (Meta's timestamps have whole seconds: see conversation_order).
    shown.sort(key=conversation_order)
    return shown


@router.get("/transactions/{tx_id}", response_model=TransactionDetailOut)
async def read_transaction(tx_id: TxId, ctx: OrgMember, session: SessionDep) -> TransactionDetailOut:
    """One conversation with its messages (both directions, in time order) and `window_expires_at`, the end of
    the customer's 24-hour window. Supervisors, and agents of its inbox.
    """
    tx = await _visible_transaction(session, ctx, tx_id)
    customers = await _customers(session, [tx])
    shown = await _conversation(session, tx.id)
    inbox = await session.get(Inbox, tx.inbox_id)
    window = await window_expires_at(session, tx.org_id, inbox.phone_number_id, tx.customer_id) if inbox else None
    return TransactionDetailOut(**transaction_out(tx, customers[tx.customer_id]).model_dump(),
                                window_expires_at=window, messages=shown)


@router.get("/transactions/{tx_id}/events", response_model=Page[TransactionEventOut])
async def transaction_events(tx_id: TxId, ctx: OrgMember, session: SessionDep,
                             paging: Paging) -> Page[TransactionEventOut]:
    """The audit trail, oldest first."""
    tx = await _visible_transaction(session, ctx, tx_id)
    query = select(TransactionEvent).where(TransactionEvent.transaction_id == tx.id)
    events = (await session.scalars(paging.oldest_first(query, TransactionEvent.id))).all()
    return paging.page(events, lambda e: (e.id,), lambda e: TransactionEventOut(
        id=e.id, kind=e.kind, agent_id=e.agent_id, at=e.at, detail=e.detail))


@router.get("/transactions/{tx_id}/messages", response_model=Page[MessageOut])
async def transaction_messages(tx_id: TxId, ctx: OrgMember, session: SessionDep,
                               paging: Paging) -> Page[MessageOut]:
    """The customer's messages and the replies in one conversation, oldest first (see conversation_order)."""
    tx = await _visible_transaction(session, ctx, tx_id)
    # The order mixes Meta's and our clocks (conversation_order), which SQL cannot express: the page is
    # cut from the whole conversation in memory. One conversation stays small next to a list of them.
    shown = await _conversation(session, tx.id)
    after = paging.after([datetime, int, int])
    if after is not None:
        shown = [m for m in shown if conversation_order(m) > after]
    return paging.page(shown[: paging.limit + 1], conversation_order, lambda m: m)


async def _act(runtime: Runtime, session: AsyncSession, ctx: OrgAccess, tx_id: int, method: str,
               *args: Any) -> TransactionOut:
    # Give the connection back while the inbox actor works: under load, requests waiting on actors
    # must not hold the pool the webhook intake needs (a commit, unlike a rollback, expires nothing).
    await session.commit()

    async def visible(reading: AsyncSession) -> tuple[Transaction, CustomerOut]:
        tx = await _visible_transaction(reading, ctx, tx_id)
        return tx, (await _customers(reading, [tx]))[tx.customer_id]

    # A conversation whose inbox this gateway knows (from an offer it relayed, or an earlier action) is not read:
    # an action succeeds only for who may see it (the agent offered it or holding it, an agent of its manual
    # inbox, a supervisor), and a refusal is answered after the same check as the reads (`_visible_transaction`),
    # so a member who does not serve the inbox learns nothing of the conversation's state.
    read: tuple[Transaction, CustomerOut] | None = None
    inbox_id = runtime.places.inbox_of(ctx.org_id, tx_id)
    if inbox_id is None:
        # One read step (on SQLite a worker thread's session: no round trip through the loop per statement).
        read = await runtime.db.read(visible)
        inbox_id = read[0].inbox_id
        runtime.places.learn(ctx.org_id, tx_id, inbox_id)
    result = await call_through_restart(lambda: runtime.routing.inbox(ctx.org_id, inbox_id), method, tx_id, *args,
                                        unavailable="the inbox's actor is restarting; retry shortly")
    if result["status"] != 200:
        if read is None:  # the reads' visibility check alone: its 403 or 404 goes first, no customer is needed
            await runtime.db.read(functools.partial(_visible_transaction, ctx=ctx, tx_id=tx_id))
        raise ApiError(result["status"], result["detail"])
    view = dict(result.get("transaction") or {})
    # The conversation as the inbox's step left it: not read again. An inbox actor of an earlier version (still
    # running) leaves out what never changes: read then.
    customer, created_at = view.pop("customer", None), view.pop("created_at", None)
    if not view or customer is None or created_at is None:
        tx, known_customer = read if read is not None else await runtime.db.read(visible)
        if not view:
            written = await session.get(Transaction, tx.id, populate_existing=True)
            return transaction_out(written or tx, known_customer)
        customer, created_at = known_customer, tx.created_at
    return TransactionOut(id=tx_id, org_id=ctx.org_id, inbox_id=inbox_id, customer=customer,
                          created_at=created_at, **view)


def _acting_user(ctx: OrgAccess) -> int:
    if ctx.user is None:
        raise forbidden("the platform admin cannot act as an agent")
    return ctx.user.id


@router.post("/transactions/{tx_id}/accept", response_model=TransactionOut)
async def accept_offer(tx_id: TxId, ctx: OrgActing, session: SessionDep, runtime: RuntimeDep) -> TransactionOut:
    """Accept the offer ringing for the caller: the conversation is assigned to them. 409 when the offer is over,
    or when the caller already holds as many conversations as their capacity (the offer then goes back to the
    queue); repeating an accept that succeeded answers 200 again.
    """
    return await _act(runtime, session, ctx, tx_id, "accept", _acting_user(ctx))


@router.post("/transactions/{tx_id}/decline", response_model=TransactionOut)
async def decline_offer(tx_id: TxId, ctx: OrgActing, session: SessionDep, runtime: RuntimeDep) -> TransactionOut:
    """Decline the offer ringing for the caller: it goes to the next agent in the inbox's order."""
    return await _act(runtime, session, ctx, tx_id, "decline", _acting_user(ctx))


@router.post("/transactions/{tx_id}/claim", response_model=TransactionOut)
async def claim_transaction(tx_id: TxId, ctx: OrgActing, session: SessionDep, runtime: RuntimeDep) -> TransactionOut:
    """Take a waiting conversation of a manual inbox: the first claim wins, later ones get 409 (409 naming the
    mode in other inboxes, and 409 when the caller is away or at capacity). Agents of the inbox.
    """
    return await _act(runtime, session, ctx, tx_id, "claim", _acting_user(ctx))


@router.post("/transactions/{tx_id}/close", response_model=TransactionOut)
async def close_transaction(tx_id: TxId, ctx: OrgActing, session: SessionDep, runtime: RuntimeDep) -> TransactionOut:
    """Close the conversation: frees the agent's capacity and starts their idle clock. The agent handling it, or
    a supervisor.
    """
    acting = ctx.user.id if ctx.user is not None else 0
    return await _act(runtime, session, ctx, tx_id, "close", acting, ctx.is_supervisor)


@router.post("/transactions/{tx_id}/transfer", response_model=TransactionOut)
async def transfer_transaction(tx_id: TxId, body: TransferRequest, ctx: Supervisor, session: SessionDep,
                               runtime: RuntimeDep) -> TransactionOut:
    """Move a conversation to another agent of its inbox (`user_id`) or back to its queue (`to_queue: true`).
    Supervisors.
    """
    if (body.user_id is None) == (not body.to_queue):
        raise field_error(("body",), "give exactly one of user_id or to_queue: true")
    by = ctx.user.id if ctx.user is not None else None
    return await _act(runtime, session, ctx, tx_id, "transfer", by, body.user_id)


@router.get("/inboxes/{inbox_id}/queue", response_model=Page[QueueEntryOut])
async def inbox_queue(inbox_id: InboxId, ctx: OrgMember, session: SessionDep,
                      paging: Paging) -> Page[QueueEntryOut]:
    """Queued and offered conversations, longest waiting first."""
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    served = await _served_inboxes(session, ctx)
    if served is not None and inbox.id not in served:
        raise forbidden("only supervisors and the inbox's agents may see its queue")
    # The first message of each transaction: an alias, correlated to the transaction only (correlating
    # the outer InboundMessage too would leave the subquery without a FROM clause).
    earlier = aliased(InboundMessage)
    first_ids = select(func.min(earlier.id)).where(earlier.transaction_id == Transaction.id).correlate(Transaction)
    query = (select(Transaction, InboundMessage.summary)
             .outerjoin(InboundMessage, InboundMessage.id == first_ids.scalar_subquery())
             .where(Transaction.inbox_id == inbox.id, Transaction.state.in_(("queued", "offered"))))
    after = paging.after([datetime, int])
    if after is not None:
        query = query.where(or_(Transaction.waiting_since > after[0],
                                and_(Transaction.waiting_since == after[0], Transaction.id > after[1])))
    rows = (await session.execute(
        query.order_by(Transaction.waiting_since, Transaction.id).limit(paging.limit + 1))).all()
    customers = await _customers(session, [tx for tx, _ in rows])
    return paging.page(rows, lambda row: (row[0].waiting_since, row[0].id), lambda row: QueueEntryOut(
        id=row[0].id, customer=customers[row[0].customer_id], state=row[0].state,
        waiting_since=row[0].waiting_since, offered_to=row[0].offered_to, first_message=row[1]))
