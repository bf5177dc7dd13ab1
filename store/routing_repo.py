"""Store access for the routing actors: state loaded on activation, explicit writes on every transition."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store import customers
from store.agent_streams import APPEND_EVENTS, LOCK_STREAMS, StreamEvent, Told, link_appended, rows_of
from store.core_connection import CoreConnection, core_connection
from store.tables import (
    AgentEvent,
    AgentState,
    InboundMessage,
    StickyAgent,
    Transaction,
    TransactionEvent,
)
from store.types import utcnow
from store.upsert import upsert_statement

# Built once, as the fence is (`store.inbox_ownership`): a statement object keeps its cache key. (bindparam names
# differ from the columns': SQLAlchemy reserves those of an UPDATE's SET clause.)
_ATTACH_IF_UNATTACHED = (
    update(InboundMessage).where(InboundMessage.id.in_(bindparam("ids", expanding=True)),
                                 InboundMessage.inbox_id == bindparam("inbox"),
                                 InboundMessage.customer_id == bindparam("customer"),
                                 InboundMessage.transaction_id.is_(None))
    .values(transaction_id=bindparam("transaction")).returning(InboundMessage.id))


def agent_snapshot(state: AgentState | None, user_id: int, active_count: int,
                   has_pending_offer: bool) -> dict[str, Any]:
    """The plain-dict snapshot an agent actor pushes to its inboxes (also built from the store)."""
    if state is None:
        return {"user_id": user_id, "status": "offline", "max_concurrent": 1, "active_count": active_count,
                "has_pending_offer": has_pending_offer, "idle_since": None}
    idle_since = state.last_chat_end_at or state.available_since
    return {"user_id": user_id, "status": state.status, "max_concurrent": state.max_concurrent,
            "active_count": active_count, "has_pending_offer": has_pending_offer,
            "idle_since": idle_since.isoformat() if idle_since else None}


async def load_agent_snapshots(session: AsyncSession, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(user_ids)
    if not ids:
        return {}
    states = {s.user_id: s for s in (await session.scalars(
        select(AgentState).where(AgentState.user_id.in_(ids)))).all()}
    active = dict((await session.execute(
        select(Transaction.agent_id, func.count()).where(Transaction.agent_id.in_(ids), Transaction.state == "assigned")
        .group_by(Transaction.agent_id)
    )).tuples().all())
    pending = set((await session.scalars(
        select(Transaction.offered_to).where(Transaction.offered_to.in_(ids), Transaction.state == "offered")
    )).all())
    return {uid: agent_snapshot(states.get(uid), uid, int(active.get(uid, 0)), uid in pending) for uid in ids}


async def load_open_transactions(session: AsyncSession, inbox_id: int) -> list[Transaction]:
    return list((await session.scalars(
        select(Transaction).where(Transaction.inbox_id == inbox_id, Transaction.state != "closed")
        .order_by(Transaction.waiting_since, Transaction.id)
    )).all())


async def past_offerees(session: AsyncSession, transaction_ids: Sequence[int]) -> dict[int, set[int]]:
    result: dict[int, set[int]] = {}
    if not transaction_ids:
        return result
    rows = (await session.execute(
        select(TransactionEvent.transaction_id, TransactionEvent.agent_id)
        .where(TransactionEvent.transaction_id.in_(transaction_ids), TransactionEvent.kind == "offered")
    )).all()
    for tx_id, agent_id in rows:
        if agent_id is not None:
            result.setdefault(tx_id, set()).add(agent_id)
    return result


def message_payload(message: InboundMessage | Row[Any], customer: dict[str, Any] | None = None,
                    customer_ids: list[int] | None = None) -> dict[str, Any]:
    """A stored message as an inbox actor routes it. `customer_ids`: its customer's id first, then the
    customers merged into it, whose open conversations (if any) are this customer's too."""
    assert message.customer_id is not None or customer_ids
    return {"id": message.id, "inbox_id": message.inbox_id, "wamid": message.wamid,
            "from_wa_id": message.from_wa_id, "from_user_id": message.from_user_id,
            "customer_id": customer_ids[0] if customer_ids else message.customer_id,
            "customer_ids": customer_ids or [message.customer_id], "customer": customer or {},
            "customer_name": message.customer_name, "type": message.type,
            "summary": message.summary, "sent_at": message.sent_at.isoformat()}


_FORWARDED_FIELDS = ("id", "inbox_id", "wamid", "from_wa_id", "from_user_id", "customer_id", "customer",
                     "customer_name", "type", "summary", "sent_at")


def forwarded_payload(message: dict[str, Any]) -> dict[str, Any] | None:
    """A message as the gateway forwarded it (`actors.messages.StoredMessage`), in `message_payload`'s shape;
    None when it lacks a field (then it is read from the store). Its customer as resolved when it was stored."""
    if any(name not in message for name in _FORWARDED_FIELDS) or not isinstance(message["customer_id"], int):
        return None
    payload = {name: message[name] for name in _FORWARDED_FIELDS}
    payload["customer_ids"] = [message["customer_id"]]
    return payload


# What routing reads of a message: never `raw` (Meta's whole payload, decoded for nothing on the hot path). Read as
# rows on the session's connection: the routing steps never load messages as objects.
_ROUTED_COLUMNS = (
    InboundMessage.id, InboundMessage.org_id, InboundMessage.inbox_id, InboundMessage.transaction_id,
    InboundMessage.wamid, InboundMessage.from_wa_id, InboundMessage.from_user_id, InboundMessage.customer_id,
    InboundMessage.customer_name, InboundMessage.type, InboundMessage.summary, InboundMessage.sent_at,
)


async def _routed(session: AsyncSession, query: Any) -> list[Any]:
    return list((await (await core_connection(session)).execute(query)).all())


async def _payloads(session: AsyncSession, messages: Sequence[Any]) -> list[dict[str, Any]]:
    customer_of: dict[int, int] = {}
    for message in messages:
        customer_id = message.customer_id
        if customer_id is None:
            # Stored before customers existed, naming no sender: a conversation of its own.
            customer_id = await customers.new_anonymous_customer(session, message.org_id, message.customer_name)
            await session.execute(update(InboundMessage).where(InboundMessage.id == message.id)
                                  .values(customer_id=customer_id))
        customer_of[message.id] = customer_id
    aliases, shown = await customers.aliases_and_views(session, set(customer_of.values()))
    return [message_payload(m, shown.get(customer_of[m.id]),
                            aliases.get(customer_of[m.id]) or [customer_of[m.id]]) for m in messages]


async def first_messages(session: AsyncSession, transaction_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not transaction_ids:
        return {}
    first_ids = select(func.min(InboundMessage.id)).where(
        InboundMessage.transaction_id.in_(transaction_ids)).group_by(InboundMessage.transaction_id)
    messages = await _routed(session, select(*_ROUTED_COLUMNS).where(InboundMessage.id.in_(first_ids)))
    payloads = await _payloads(session, messages)
    return {m.transaction_id: p for m, p in zip(messages, payloads, strict=True) if m.transaction_id is not None}


# Built once: the intake runs them for every message (building and keying a statement costs more than running it).
_ASSIGNED_TO_CUSTOMER = select(Transaction.id, Transaction.agent_id).where(
    Transaction.state == "assigned", Transaction.inbox_id == bindparam("inbox"),
    Transaction.customer_id == bindparam("customer"))
_ATTACH_UNATTACHED = update(InboundMessage).where(
    InboundMessage.id.in_(bindparam("ids", expanding=True)), InboundMessage.transaction_id.is_(None)).values(
    transaction_id=bindparam("tx"))
_ATTACH_TO_HELD = _ATTACH_UNATTACHED.returning(InboundMessage.id)
# PostgreSQL: the share lock and the attach in one statement (one round trip, not two). The conversation's row is
# locked by the CTE, which then yields its newest version (a close committed meanwhile leaves no row); the messages
# are this transaction's own rows, which the statement's snapshot sees.
_HELD = _ASSIGNED_TO_CUSTOMER.add_columns(Transaction.inbox_id, Transaction.customer_id).with_for_update(
    read=True).cte("held")
_ATTACH_TO_HELD_LOCKED = update(InboundMessage).where(
    InboundMessage.inbox_id == _HELD.c.inbox_id, InboundMessage.customer_id == _HELD.c.customer_id,
    InboundMessage.id.in_(bindparam("ids", expanding=True)), InboundMessage.transaction_id.is_(None),
    _HELD.c.agent_id.is_not(None),
    select(func.count()).select_from(_HELD).where(_HELD.c.agent_id.is_not(None)).scalar_subquery() == 1,
).values(transaction_id=_HELD.c.id).returning(InboundMessage.id, _HELD.c.id, _HELD.c.agent_id)


async def attach_to_assigned(session: AsyncSession, messages: Sequence[tuple[int, int, int]],
                             share_lock: bool) -> dict[int, tuple[int, int]]:
    """At intake, in the transaction that stores them: attach (message id, inbox id, customer id) to the customer's
    conversation on the inbox when an agent holds it; message id -> (transaction id, agent id) of those attached.

    A follow-up then costs its inbox no write: the inbox only tells the agent. `share_lock` (PostgreSQL): the
    conversation's row is share-locked, so a close either commits first (and is seen: the message opens the
    customer's next conversation) or waits for this commit (and the message is its conversation's last before
    the close). SQLite has one writer.
    """
    pairs = {(inbox_id, customer_id) for _, inbox_id, customer_id in messages}
    if not pairs:
        return {}
    connection = await core_connection(session)
    if share_lock:
        return await _attach_share_locked(connection, messages)
    found: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for inbox_id, customer_id in sorted(pairs):
        for tx_id, agent_id in (await connection.execute(_ASSIGNED_TO_CUSTOMER,
                                                         {"inbox": inbox_id, "customer": customer_id})).all():
            if agent_id is not None:
                found.setdefault((inbox_id, customer_id), []).append((int(tx_id), int(agent_id)))
    by_tx: dict[tuple[int, int], list[int]] = {}
    for message_id, inbox_id, customer_id in messages:
        open_txs = found.get((inbox_id, customer_id), [])
        if len(open_txs) == 1:  # never guess between two: the inbox's own step reads the store
            by_tx.setdefault(open_txs[0], []).append(message_id)
    attached: dict[int, tuple[int, int]] = {}
    for (tx_id, agent_id), ids in by_tx.items():
        done = (await connection.execute(_ATTACH_TO_HELD, {"ids": ids, "tx": tx_id})).scalars().all()
        attached.update({int(message_id): (tx_id, agent_id) for message_id in done})
    return attached


async def _attach_share_locked(connection: CoreConnection, messages: Sequence[tuple[int, int, int]]
                               ) -> dict[int, tuple[int, int]]:
    """`attach_to_assigned` on PostgreSQL: one statement per (inbox, customer), which share-locks the conversation's
    row and attaches the messages to it when it is the one an agent holds."""
    ids_of: dict[tuple[int, int], list[int]] = {}
    for message_id, inbox_id, customer_id in messages:
        ids_of.setdefault((inbox_id, customer_id), []).append(message_id)
    attached: dict[int, tuple[int, int]] = {}
    for (inbox_id, customer_id), ids in sorted(ids_of.items()):  # one order everywhere: share locks without deadlock
        rows = await connection.execute(_ATTACH_TO_HELD_LOCKED,
                                        {"inbox": inbox_id, "customer": customer_id, "ids": ids})
        attached.update({int(message_id): (int(tx_id), int(agent_id)) for message_id, tx_id, agent_id in rows})
    return attached


def detach_messages(connection: Connection, inbox_id: int, transaction_id: int, agent_id: int,
                    message_ids: Collection[int]) -> list[int]:
    """In a close's commit: messages of the conversation whose delivery its agent never answered and that its
    stream does not show either (an answer late under load is not a message unseen) are unattached again, to be
    routed as the customer's next conversation; their ids.

    The agent's delivery commit may still come: it writes a message's event only if the message is still attached
    to the conversation (`store.agent_store_steps._deliver_and_read`), so a message is shown with this conversation or
    handed on, never both. On PostgreSQL that takes the agent's stream lock first, as every writer of its stream
    does: this check then sees a delivery committed before, and one waiting for the lock sees the hand-back. (The
    lock is its own statement: READ COMMITTED gives the check a snapshot taken once it is held.) SQLite has one
    writer at a time.

    A claimed or transferred conversation's first message is shown by its `assigned`/`transferred` event (its
    `first_message`, written with the assignment: `store.agent_streams`), not by a `message` event: that counts as
    shown too."""
    if connection.dialect.name == "postgresql":
        connection.execute(LOCK_STREAMS, {"agents": [agent_id]})
    shown = select(AgentEvent.id).where(
        AgentEvent.user_id == agent_id,
        AgentEvent.payload["transaction_id"].as_integer() == transaction_id,
        or_(and_(AgentEvent.kind == "message", AgentEvent.payload["message"]["id"].as_integer() == InboundMessage.id),
            and_(AgentEvent.kind.in_(("assigned", "transferred")),
                 AgentEvent.payload["first_message"]["id"].as_integer() == InboundMessage.id)))
    return [int(i) for i in connection.execute(
        update(InboundMessage).where(InboundMessage.inbox_id == inbox_id,
                                     InboundMessage.transaction_id == transaction_id,
                                     InboundMessage.id.in_(list(message_ids)), ~shown.exists())
        .values(transaction_id=None).returning(InboundMessage.id)).scalars()]


async def append_in_transaction(session: AsyncSession, events: Sequence[tuple[int, StreamEvent]]) -> Told:
    """In the session's transaction (the intake's, the sender's): events on agents' streams, (org id, event) in order
    — a follow-up shown, a reply's delivery status — so they cost the agent no write and land with what they show;
    each agent's, as stored and linked, is what it is told (`store.agent_streams`). On PostgreSQL the agents' state
    rows are locked first, sorted, as every writer of a stream does (`append_to_streams`), so a stream's ids commit
    in id order."""
    if not events:
        return {}
    connection = await core_connection(session)
    if session.get_bind().dialect.name == "postgresql":
        await connection.execute(LOCK_STREAMS, {"agents": sorted({agent_id for _, (agent_id, _, _) in events})})
    now = utcnow()
    on_streams = [event for _, event in events]
    appended = (await connection.execute(APPEND_EVENTS, rows_of([org for org, _ in events], on_streams, now))).all()
    return link_appended(on_streams, appended, now)


_ATTACHED_IDS = select(InboundMessage.id).where(InboundMessage.inbox_id == bindparam("inbox"),
                                                InboundMessage.transaction_id == bindparam("tx"))


def attached_ids(connection: Connection, inbox_id: int, transaction_id: int) -> set[int]:
    """In a write step's transaction, after it wrote the conversation's row: the ids of the messages attached to it.
    On PostgreSQL the intake share-locks that row to attach a follow-up, so this sees every attach committed before
    the step's own write; one waiting for the lock sees the step's outcome. SQLite has one writer."""
    return set(connection.execute(_ATTACHED_IDS, {"inbox": inbox_id, "tx": transaction_id}).scalars())


# Messages handed over to an agent per read.
HAND_OVER_PAGE = 200


async def messages_except(session: AsyncSession, inbox_id: int, transaction_id: int, known: Collection[int],
                          limit: int = HAND_OVER_PAGE) -> list[dict[str, Any]]:
    """The transaction's oldest `limit` messages other than `known`, oldest first (the next batch to hand over)."""
    query = select(*_ROUTED_COLUMNS).where(InboundMessage.inbox_id == inbox_id,
                                           InboundMessage.transaction_id == transaction_id)
    if known:
        query = query.where(InboundMessage.id.not_in(list(known)))
    return await _payloads(session, await _routed(session, query.order_by(InboundMessage.id).limit(limit)))


async def unrouted_messages(session: AsyncSession, inbox_id: int, ids: Sequence[int] | None = None,
                            limit: int | None = None, after_id: int = 0) -> list[dict[str, Any]]:
    """Messages stored for this inbox but not yet attached to a transaction, in arrival order.

    With `limit`, a page: the caller loops from the last id it read (`after_id`) until a page comes back short
    (never a silent cut; a page's messages may stay unattached a while, waiting for their conversation's commit).
    """
    query = select(*_ROUTED_COLUMNS).where(InboundMessage.inbox_id == inbox_id,
                                           InboundMessage.transaction_id.is_(None))
    if ids is not None:
        query = query.where(InboundMessage.id.in_(ids))
    if after_id:
        query = query.where(InboundMessage.id > after_id)
    query = query.order_by(InboundMessage.id)
    if limit is not None:
        query = query.limit(limit)
    return await _payloads(session, await _routed(session, query))


async def customers_of(session: AsyncSession, customer_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each customer id -> {id, user_id, wa_id, username, name}, as shown to agents."""
    return await customers.customers_by_id(session, customer_ids)


def attach_messages(connection: Connection, transaction_id: int, message_ids: Sequence[int]) -> None:
    connection.execute(update(InboundMessage).where(InboundMessage.id.in_(message_ids))
                       .values(transaction_id=transaction_id))


def attach_if_unattached(connection: Connection, transaction_id: int, inbox_id: int, customer_id: int,
                         message_ids: Sequence[int]) -> set[int]:
    """Attach those of the messages that are still unattached and still the customer's; their ids.

    A message attached meanwhile (a redelivered forward, the control loop) is left alone; one whose
    customer was merged into another since it was forwarded is left for a step that reads the store.
    """
    return set(connection.execute(_ATTACH_IF_UNATTACHED, {
        "ids": list(message_ids), "inbox": inbox_id, "customer": customer_id, "transaction": transaction_id,
    }).scalars())


def insert_transaction(connection: Connection, row: dict[str, Any]) -> int:
    """A new transaction row (the columns of `Transaction`); its id."""
    return int(connection.execute(insert(Transaction).values(**row).returning(Transaction.id)).scalar_one())


def save_transaction(connection: Connection, transaction_id: int, columns: dict[str, Any]) -> None:
    connection.execute(update(Transaction).where(Transaction.id == transaction_id).values(**columns))


async def sticky_agent_of(session: AsyncSession, inbox_id: int, customer_id: int) -> int | None:
    # Sticky memory follows a customer merged into another one.
    survivor = await customers.survivor_of(session, customer_id)
    row = await session.get(StickyAgent, (inbox_id, survivor))
    return row.user_id if row else None


async def sticky_customer(session: AsyncSession, customer_id: int) -> int:
    """The customer whose sticky memory a conversation writes: a merged customer's survivor."""
    return await customers.survivor_of(session, customer_id)


def remember_sticky_agent(connection: Connection, inbox_id: int, sticky_customer_id: int, user_id: int) -> None:
    """`sticky_customer_id` as `sticky_customer` answered it (a read, done before the write)."""
    connection.execute(upsert_statement(connection.dialect.name, StickyAgent, [
        {"inbox_id": inbox_id, "customer_id": sticky_customer_id, "user_id": user_id, "updated_at": utcnow()}],
        key=["inbox_id", "customer_id"]))


def remember_sticky_agent_of(connection: Connection, inbox_id: int, customer_id: int, user_id: int) -> None:
    """`remember_sticky_agent` for the customer's survivor, found in the same write."""
    remember_sticky_agent(connection, inbox_id, customers.survivor_on(connection, customer_id), user_id)


def add_transaction_event(connection: Connection, transaction_id: int, kind: str, agent_id: int | None,
                          at: datetime, **detail: Any) -> None:
    add_transaction_events(connection, [transaction_event(transaction_id, kind, agent_id, at, **detail)])


def transaction_event(transaction_id: int, kind: str, agent_id: int | None, at: datetime,
                      **detail: Any) -> dict[str, Any]:
    """A `transaction_events` row, for `add_transaction_events`."""
    return {"transaction_id": transaction_id, "kind": kind, "agent_id": agent_id, "at": at, "detail": detail}


def add_transaction_events(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Audit events in one statement, in the order given (ids ascend with it)."""
    if rows:
        connection.execute(insert(TransactionEvent).values(rows))
