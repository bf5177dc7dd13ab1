"""What the store says about one step: every acknowledged message stored and attached to a
conversation, conversations closed, no transaction accepted twice, and the offer timers' lateness."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from store.db import Database
from store.tables import InboundMessage, Transaction, TransactionEvent


@dataclass
class StoreView:
    # wamid -> transaction id (None: stored but not attached to a conversation yet)
    attached: dict[str, int | None] = field(default_factory=dict)
    tx_state: dict[int, str] = field(default_factory=dict)
    tx_inbox: dict[int, int] = field(default_factory=dict)
    accepts_per_tx: dict[int, int] = field(default_factory=dict)
    timer_lateness_s: list[float] = field(default_factory=list)
    misses: int = 0


async def read_step(db: Database, org_id: int, wamid_prefix: str, timer_inbox_id: int | None) -> StoreView:
    view = StoreView()
    async with db.session() as session:
        rows = (await session.execute(
            select(InboundMessage.wamid, InboundMessage.transaction_id)
            .where(InboundMessage.org_id == org_id, InboundMessage.wamid.startswith(wamid_prefix)))).all()
        view.attached = {wamid: tx for wamid, tx in rows}
        tx_ids = sorted({tx for tx in view.attached.values() if tx is not None})
        for chunk_start in range(0, len(tx_ids), 500):
            chunk = tx_ids[chunk_start:chunk_start + 500]
            for tx_id, state, inbox_id in (await session.execute(
                    select(Transaction.id, Transaction.state, Transaction.inbox_id)
                    .where(Transaction.id.in_(chunk)))).all():
                view.tx_state[tx_id] = state
                view.tx_inbox[tx_id] = inbox_id
            for tx_id, count in (await session.execute(
                    select(TransactionEvent.transaction_id, func.count())
                    .where(TransactionEvent.transaction_id.in_(chunk),
                           TransactionEvent.kind.in_(("accepted", "claimed")))
                    .group_by(TransactionEvent.transaction_id))).all():
                view.accepts_per_tx[tx_id] = int(count)
            timer_txs = [t for t in chunk if view.tx_inbox.get(t) == timer_inbox_id]
            if timer_txs:
                events = (await session.scalars(
                    select(TransactionEvent).where(TransactionEvent.transaction_id.in_(timer_txs),
                                                   TransactionEvent.kind.in_(("offered", "missed")))
                    .order_by(TransactionEvent.id))).all()
                due: dict[int, datetime] = {}
                for event in events:
                    if event.kind == "offered" and event.detail.get("expires_at"):
                        due[event.transaction_id] = datetime.fromisoformat(event.detail["expires_at"])
                    elif event.kind == "missed" and event.transaction_id in due:
                        view.misses += 1
                        view.timer_lateness_s.append((event.at - due.pop(event.transaction_id)).total_seconds())
    return view


def settled(view: StoreView, acked: set[str]) -> bool:
    """Every acknowledged message attached, and every conversation closed by its agent."""
    if any(view.attached.get(wamid) is None for wamid in acked):
        return False
    return all(state == "closed" for state in view.tx_state.values())


def wait_until_settled(database_url: str, org_id: int, wamid_prefix: str, timer_inbox_id: int | None,
                       acked: set[str], timeout_s: float) -> tuple[StoreView, float, int]:
    """Poll the store until the step has settled (or the timeout): (last view, seconds waited, polls)."""

    async def run() -> tuple[StoreView, float, int]:
        db = Database(database_url, pool_size=1)
        began = time.monotonic()
        polls = 0
        try:
            view = StoreView()
            while True:
                try:
                    view = await read_step(db, org_id, wamid_prefix, timer_inbox_id)
                    polls += 1  # committed reads, taken off the step's commit count
                except DBAPIError as exc:
                    # PostgreSQL out of connections ("too many clients") is a finding of the step, not
                    # the end of the run: poll again; the step fails on its timeout if it never settles.
                    print(f"store poll failed: {exc.orig}", flush=True)
                waited = time.monotonic() - began
                if settled(view, acked) or waited > timeout_s:
                    return view, waited, polls
                await asyncio.sleep(1.0)
        finally:
            await db.dispose()

    return asyncio.run(run())


def count_problems(view: StoreView, acked: set[str], events: list[dict[str, Any]],
                   conversation_of: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Lost, duplicated and double-assigned, from the store and from the agents' streams.

    lost: acknowledged (200) but not stored, or stored and never attached to a conversation.
    duplicated: the same message pushed twice as a `message` event, or opening two transactions.
    double_assigned: a transaction accepted twice in the store, or `assigned` to two agents' streams.
    split: a conversation whose messages ended up in more than one transaction (an agent closed
      before its last message arrived; not a loss, but reported).
    """
    lost = sum(1 for wamid in acked if view.attached.get(wamid) is None)
    pushes: dict[str, int] = {}
    first_of_tx: dict[str, set[int]] = {}
    assigned_to: dict[int, set[int]] = {}
    assigned_events: dict[int, int] = {}
    for event in events:
        wamid, tx = event.get("wamid"), event.get("tx")
        if event["type"] == "message" and wamid:
            pushes[wamid] = pushes.get(wamid, 0) + 1
        elif event["type"] == "offer" and wamid and tx is not None:
            first_of_tx.setdefault(wamid, set()).add(tx)
        elif event["type"] == "assigned" and tx is not None:
            assigned_to.setdefault(tx, set()).add(event["agent"])
            assigned_events[tx] = assigned_events.get(tx, 0) + 1
    duplicated = sum(n - 1 for n in pushes.values() if n > 1) + sum(
        len(txs) - 1 for txs in first_of_tx.values() if len(txs) > 1)
    double_store = sum(1 for n in view.accepts_per_tx.values() if n > 1)
    double_stream = sum(1 for tx, n in assigned_events.items() if n > 1 or len(assigned_to[tx]) > 1)
    txs_of_conversation: dict[tuple[int, int], set[int]] = {}
    for wamid, tx in view.attached.items():
        if tx is not None and wamid in conversation_of:
            txs_of_conversation.setdefault(conversation_of[wamid], set()).add(tx)
    split = sum(1 for txs in txs_of_conversation.values() if len(txs) > 1)
    return {"lost": lost, "duplicated": duplicated, "double_assigned": max(double_store, double_stream),
            "split_conversations": split}
