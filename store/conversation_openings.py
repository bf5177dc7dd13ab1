"""What opening a customer's conversation needs from the store, read in the intake's own transaction, and the check
the opening commit makes that it still holds.

A message the intake could not attach (its customer has no conversation an agent holds) is forwarded with its
customer's aliases (the customer, then those merged into it) and sticky agent on its inbox, read here in the
transaction that stores it: the inbox then opens the conversation without a read step of its own. Between the
intake and the opening commit the facts may change (a forward retried after its conversation opened and closed, a
customer merged by a later delivery); `still_to_open` finds that in the opening commit, which then leaves the
messages to the inbox's step that reads the store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import Connection, bindparam, func, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import CompoundSelect

from store.core_connection import core_connection
from store.tables import Customer, InboundMessage, StickyAgent

# The customers merged into any of `ids` (kind 0: customer, survivor) and the sticky agents of `ids` on one inbox
# (kind 1: customer, agent; by the table's key): one round trip for both.
_FACTS: CompoundSelect[tuple[int, int, int]] = union_all(
    select(literal_column("0").label("kind"), Customer.id.label("customer"), Customer.merged_into.label("value"))
    .where(Customer.merged_into.in_(bindparam("ids", expanding=True))),
    select(literal_column("1"), StickyAgent.customer_id, StickyAgent.user_id)
    .where(StickyAgent.inbox_id == bindparam("inbox"), StickyAgent.customer_id.in_(bindparam("ids", expanding=True))))


async def opening_facts(session: AsyncSession, pairs: Collection[tuple[int, int]]
                        ) -> dict[tuple[int, int], tuple[list[int], int | None]]:
    """(inbox id, customer id) -> (the customer's aliases, its sticky agent on the inbox or None), for customers
    the intake resolved in this transaction (so unmerged: each is its own survivor). One statement per inbox, one
    inbox for most deliveries."""
    if not pairs:
        return {}
    connection = await core_connection(session)
    merged: dict[int, set[int]] = {}
    sticky: dict[tuple[int, int], int] = {}
    for inbox in sorted({inbox for inbox, _ in pairs}):
        wanted = sorted({customer for of, customer in pairs if of == inbox})
        for kind, customer, value in (await connection.execute(_FACTS, {"inbox": inbox, "ids": wanted})).all():
            if kind == 0:
                merged.setdefault(int(value), set()).add(int(customer))
            else:
                sticky[(inbox, int(customer))] = int(value)
    return {(inbox, customer): ([customer, *sorted(merged.get(customer, ()))], sticky.get((inbox, customer)))
            for inbox, customer in pairs}


# Whether the messages are still unattached and their customer's (how many are), whether the customer is unmerged,
# and how many customers are merged into it: one round trip. No lock is needed: a stored message is attached only by
# its inbox (under its lock, fenced) or by the intake that stores it, before anyone else sees it.
_STILL = select(
    select(func.count()).select_from(InboundMessage).where(
        InboundMessage.id.in_(bindparam("ids", expanding=True)), InboundMessage.inbox_id == bindparam("inbox"),
        InboundMessage.transaction_id.is_(None),
        InboundMessage.customer_id.in_(bindparam("customers", expanding=True))).scalar_subquery(),
    select(func.count()).select_from(Customer).where(
        Customer.id == bindparam("customer"), Customer.merged_into.is_(None)).scalar_subquery(),
    select(func.count()).select_from(Customer).where(Customer.merged_into == bindparam("customer")).scalar_subquery())


def still_to_open(connection: Connection, inbox_id: int, customer_ids: Sequence[int],
                  message_ids: Collection[int]) -> bool:
    """In the opening commit: every message is still unattached and its customer's (`customer_ids`: the customer,
    then those merged into it), and the customer is still unmerged with as many merged into it. Counting them is
    enough: a customer merged into this one never leaves it while it stays unmerged (`store.customers._merge` moves
    them only with their survivor). A merge committing after this check finds the conversation open, as one
    committed before it (`store.customers`)."""
    customer, *aliases = customer_ids
    unattached, unmerged, merged = connection.execute(_STILL, {
        "ids": list(message_ids), "inbox": inbox_id, "customers": list(customer_ids), "customer": customer}).one()
    return unattached == len(set(message_ids)) and unmerged == 1 and merged == len(aliases)
