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

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.core_connection import core_connection
from store.tables import Customer, InboundMessage, StickyAgent

_MERGED_INTO = select(Customer.id, Customer.merged_into).where(
    Customer.merged_into.in_(bindparam("ids", expanding=True))).order_by(Customer.id)
# By the table's key (inbox, customer): one statement per inbox, one inbox for most deliveries.
_STICKY = select(StickyAgent.customer_id, StickyAgent.user_id).where(
    StickyAgent.inbox_id == bindparam("inbox"), StickyAgent.customer_id.in_(bindparam("ids", expanding=True)))


async def opening_facts(session: AsyncSession, pairs: Collection[tuple[int, int]]
                        ) -> dict[tuple[int, int], tuple[list[int], int | None]]:
    """(inbox id, customer id) -> (the customer's aliases, its sticky agent on the inbox or None), for customers
    the intake resolved in this transaction (so unmerged: each is its own survivor). One statement for the aliases,
    one per inbox for the sticky agents."""
    if not pairs:
        return {}
    connection = await core_connection(session)
    customer_ids = sorted({customer for _, customer in pairs})
    merged: dict[int, list[int]] = {}
    for row_id, into in (await connection.execute(_MERGED_INTO, {"ids": customer_ids})).all():
        merged.setdefault(int(into), []).append(int(row_id))
    sticky: dict[tuple[int, int], int] = {}
    for inbox in sorted({inbox for inbox, _ in pairs}):
        wanted = sorted({customer for of, customer in pairs if of == inbox})
        sticky.update({(inbox, int(customer)): int(user) for customer, user in (await connection.execute(
            _STICKY, {"inbox": inbox, "ids": wanted})).all()})
    return {(inbox, customer): ([customer, *merged.get(customer, [])], sticky.get((inbox, customer)))
            for inbox, customer in pairs}


# Which of the messages are still unattached and their customer's. No lock is needed: a stored message is attached
# only by its inbox (under its lock, fenced) or by the intake that stores it, before anyone else sees it.
_UNATTACHED = select(InboundMessage.id).where(
    InboundMessage.id.in_(bindparam("ids", expanding=True)), InboundMessage.inbox_id == bindparam("inbox"),
    InboundMessage.transaction_id.is_(None), InboundMessage.customer_id.in_(bindparam("customers", expanding=True)))

_CUSTOMER_AND_MERGED = select(Customer.id, Customer.merged_into).where(
    (Customer.id == bindparam("customer")) | (Customer.merged_into == bindparam("customer")))


def still_to_open(connection: Connection, inbox_id: int, customer_ids: Sequence[int],
                  message_ids: Collection[int]) -> bool:
    """In the opening commit: every message is still unattached and its customer's (`customer_ids`: the customer,
    then those merged into it), and the customer is still unmerged with exactly those merged into it. A merge
    committing after this check finds the conversation open, as one committed before it (`store.customers`)."""
    found = set(connection.execute(_UNATTACHED, {"ids": list(message_ids), "inbox": inbox_id,
                                           "customers": list(customer_ids)}).scalars())
    if found != set(message_ids):
        return False
    customer, *aliases = customer_ids
    rows = connection.execute(_CUSTOMER_AND_MERGED, {"customer": customer}).all()
    unmerged = any(row_id == customer and into is None for row_id, into in rows)
    return unmerged and sorted(row_id for row_id, into in rows if into == customer) == sorted(aliases)
