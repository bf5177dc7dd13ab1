"""Who a message is from: one customers row per WhatsApp user, found by BSUID first, phone number second.

`resolve_customers` runs inside the transaction that stores a webhook delivery. It serialises every
delivery naming the same identifiers (PostgreSQL: transaction-scoped advisory locks on each BSUID and
number; SQLite: the database write lock, taken by its first statement), so redeliveries and concurrent
first deliveries of one new customer find or create exactly one row; the partial unique indexes on
(org, user_id) and (org, wa_id) back this up, and creation goes through INSERT ... ON CONFLICT DO NOTHING.

Linking rules, applied per identity:
* found by BSUID: a missing number, username or name is filled in (a new number replaces the old);
* found only by number: it gains the BSUID — unless it already has a *different* BSUID: then the
  number now belongs to someone else, moves to the new customer, and the old row keeps its BSUID;
* found as two rows (one by BSUID, one by number): merged into the older row (`merged_into` on the
  other, which keeps no identifier). Messages, closed conversations and sticky memory move to the
  survivor. An open conversation of the merged row stays on it (the unique index allows one open
  conversation per customer and inbox, and both may already have one, each with its own agent):
  it keeps working until closed; the inbox routes the customer's new messages to the survivor's open
  conversation if it has one, else to that one (see `aliases_of`), so no message is lost or split;
* `user_changed_number` / `user_changed_user_id` system messages carry the previous identifiers:
  the customer found by them takes the new number / BSUID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from store.core_connection import core_connection
from store.errors import CustomersBusy, lock_not_available
from store.tables import Customer, InboundMessage, StickyAgent, Transaction
from store.types import utcnow
from store.upsert import insert_ignoring_duplicates


@dataclass(frozen=True, slots=True)
class Identity:
    """What one message says about its sender; `previous_*` come from identity-change system messages."""

    user_id: str | None = None
    wa_id: str | None = None
    username: str | None = None
    name: str | None = None
    previous_user_id: str | None = None
    previous_wa_id: str | None = None

    @property
    def user_ids(self) -> set[str]:
        return {u for u in (self.user_id, self.previous_user_id) if u}

    @property
    def wa_ids(self) -> set[str]:
        return {w for w in (self.wa_id, self.previous_wa_id) if w}

    @property
    def known(self) -> bool:
        return bool(self.user_ids or self.wa_ids)


@dataclass(frozen=True, slots=True)
class CustomerRef:
    id: int
    user_id: str | None
    wa_id: str | None
    username: str | None
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user_id": self.user_id, "wa_id": self.wa_id, "username": self.username,
                "name": self.name}

    @classmethod
    def of(cls, row: Customer | Row[Any]) -> CustomerRef:
        return cls(id=row.id, user_id=row.user_id, wa_id=row.wa_id, username=row.username, name=row.name)


# The predicates of the partial unique indexes on BSUIDs and numbers.
_HAS_USER_ID = Customer.user_id.is_not(None)
_HAS_WA_ID = Customer.wa_id.is_not(None)
_IDENTITY_COLUMNS = (Customer.id, Customer.user_id, Customer.wa_id, Customer.username, Customer.name)


async def resolve_customers(session: AsyncSession, org_id: int, identities: Sequence[Identity],
                            changed: set[int] | None = None, locked: bool = False) -> list[CustomerRef | None]:
    """The customer of each identity (None when it names no BSUID and no number), created or linked. `changed`
    gets the ids of the customers whose identity this call wrote (created, changed, merged). `locked`: the
    transaction already holds the identities' locks (`lock_identifiers`)."""
    if not any(identity.known for identity in identities):
        return [None] * len(identities)
    if not locked:
        await lock_identifiers(session, identifier_lock_keys(org_id, identities))
    resolved = [await _resolve_one(session, org_id, identity) if identity.known else None
                for identity in identities]
    ids = [r.ref.id if r is not None else None for r in resolved]
    if all(r is None or r.touched_only_itself for r in resolved):
        # Nothing merged and no other row changed: each row is as its identity left it (the last
        # identity naming a row wrote it last), so reading the rows back would return the same.
        final = {r.ref.id: r.ref for r in resolved if r is not None}
        if changed is not None:
            changed.update(r.ref.id for r in resolved if r is not None and r.changed)
        return [final[i] if i is not None else None for i in ids]
    # A later identity of the same delivery may have merged an earlier one's customer away.
    survivors = await _survivor_ids(session, {i for i in ids if i is not None})
    if changed is not None:
        changed.update(survivors.values())  # rows merged or given up: every customer of the delivery counts
    rows = {row.id: row for row in (await session.scalars(
        select(Customer).where(Customer.id.in_(set(survivors.values())))
        .execution_options(populate_existing=True))).all()}
    return [CustomerRef.of(rows[survivors[i]]) if i is not None else None for i in ids]


async def new_anonymous_customer(session: AsyncSession, org_id: int, name: str | None) -> int:
    """A customer for a message that named no sender: alone, rather than mixed with other strangers."""
    now = utcnow()
    row = Customer(org_id=org_id, name=name, created_at=now, updated_at=now)
    session.add(row)
    await session.flush()
    return row.id


async def aliases_of(session: AsyncSession, customer_ids: Iterable[int]) -> dict[int, list[int]]:
    """Each customer id -> [its survivor, then every customer merged into that survivor]."""
    return (await aliases_and_views(session, customer_ids))[0]


# Customers and the customers merged into them (read as rows: the routing step never loads them as objects).
_WITH_MERGED = select(*_IDENTITY_COLUMNS, Customer.merged_into).where(
    or_(Customer.id.in_(bindparam("ids", expanding=True)), Customer.merged_into.in_(bindparam("ids", expanding=True)))
).order_by(Customer.id)


async def aliases_and_views(session: AsyncSession, customer_ids: Iterable[int]
                            ) -> tuple[dict[int, list[int]], dict[int, dict[str, Any]]]:
    """`aliases_of` and `customers_by_id` together, in two statements (the inbox's hot path needs both)."""
    survivors = await _survivor_ids(session, set(customer_ids))
    if not survivors:
        return {}, {}
    wanted = sorted(set(survivors.values()))
    rows = (await (await core_connection(session)).execute(_WITH_MERGED, {"ids": wanted})).all()
    merged: dict[int, list[int]] = {}
    shown: dict[int, CustomerRef] = {}
    for row in rows:
        if row.id in wanted:
            shown[row.id] = CustomerRef.of(row)
        if row.merged_into in wanted:
            merged.setdefault(row.merged_into, []).append(row.id)
    aliases = {cid: [survivor, *merged.get(survivor, [])] for cid, survivor in survivors.items()}
    views = {cid: shown[s].as_dict() for cid, s in survivors.items() if s in shown}
    return aliases, views


async def survivor_of(session: AsyncSession, customer_id: int) -> int:
    return (await _survivor_ids(session, {customer_id})).get(customer_id, customer_id)


def survivor_on(connection: Connection, customer_id: int) -> int:
    """`survivor_of` inside a write step, on its connection (no read step of its own)."""
    row = connection.execute(_SURVIVORS, {"ids": [customer_id]}).first()
    return customer_id if row is None else int(row[1])


async def customers_by_id(session: AsyncSession, customer_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each customer id -> the customer as shown (its survivor's identity when it was merged)."""
    return (await aliases_and_views(session, customer_ids))[1]


# ---------------------------------------------------------------- internals


def identifier_lock_key(org_id: int, kind: str, value: str) -> int:
    """PostgreSQL's advisory lock key for one identifier of an organization's customers: `kind` "u" for a BSUID,
    "w" for a phone number (wa_id)."""
    digest = hashlib.sha256(f"wa-router:customer:{org_id}:{kind}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# A write that changes nothing: SQLite's write lock, taken up front.
_TAKE_WRITE_LOCK = update(Customer).where(text("1 = 0")).values(updated_at=Customer.updated_at)


def identifier_lock_keys(org_id: int, identities: Iterable[Identity]) -> set[int]:
    """The advisory lock keys of every BSUID and number the identities name, in one organization."""
    return ({identifier_lock_key(org_id, "u", u) for i in identities for u in i.user_ids}
            | {identifier_lock_key(org_id, "w", w) for i in identities for w in i.wa_ids})


# Every key in ascending order, in one statement: PostgreSQL evaluates a volatile output expression after the sort
# (the plan's Result above its Sort), so every transaction takes its keys in one order: no deadlock between two.
_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(key) FROM unnest(CAST(:keys AS BIGINT[])) AS key ORDER BY key")


async def lock_identifiers(session: AsyncSession, keys: Collection[int]) -> None:
    """Serialise deliveries naming the same identifiers (`identifier_lock_keys`) until this transaction ends.

    PostgreSQL: CustomersBusy when they stay locked past the connection's `lock_timeout` (the gateway's
    `store_lock_wait_s`): another delivery of the same customers is still being written."""
    if session.get_bind().dialect.name == "postgresql":
        if keys:
            try:
                await session.execute(_LOCK_KEYS, {"keys": sorted(keys)})
            except DBAPIError as exc:
                if lock_not_available(exc):
                    raise CustomersBusy(f"{len(keys)} customer identifier(s) locked past the wait") from exc
                raise
    else:
        # SQLite takes its single write lock at a transaction's first write and holds it to the end.
        await (await core_connection(session)).execute(_TAKE_WRITE_LOCK)


_SURVIVORS = select(Customer.id, func.coalesce(Customer.merged_into, Customer.id)).where(
    Customer.id.in_(bindparam("ids", expanding=True)))


async def _survivor_ids(session: AsyncSession, customer_ids: set[int]) -> dict[int, int]:
    if not customer_ids:
        return {}
    rows = (await (await core_connection(session)).execute(_SURVIVORS, {"ids": list(customer_ids)})).all()
    return {row_id: survivor for row_id, survivor in rows}


def _naming(*conditions: Any) -> Any:
    return select(*_IDENTITY_COLUMNS).where(Customer.org_id == bindparam("org"), Customer.merged_into.is_(None),
                                            or_(*conditions)).order_by(Customer.id)


# The unmerged customers holding any of an identity's BSUIDs or numbers, by which of the two it names (built once:
# every delivery runs one).
_NAMING = {
    (True, True): _naming(Customer.user_id.in_(bindparam("user_ids", expanding=True)),
                          Customer.wa_id.in_(bindparam("wa_ids", expanding=True))),
    (True, False): _naming(Customer.user_id.in_(bindparam("user_ids", expanding=True))),
    (False, True): _naming(Customer.wa_id.in_(bindparam("wa_ids", expanding=True))),
}


async def _rows(session: AsyncSession, org_id: int, *conditions: Any) -> list[Row[Any]]:
    """The unmerged customers matching any condition, oldest first: rows with the identity's columns (read on
    the session's connection, so they are the store's values after this transaction's own writes)."""
    return list((await (await core_connection(session)).execute(
        select(*_IDENTITY_COLUMNS).where(Customer.org_id == org_id, Customer.merged_into.is_(None), or_(*conditions))
        .order_by(Customer.id))).all())


@dataclass(frozen=True, slots=True)
class _Resolved:
    ref: CustomerRef  # the row as this identity left it
    touched_only_itself: bool  # no merge, and no other row gave up its number
    changed: bool = True  # the row was written (created, or its identity changed)


async def _resolve_one(session: AsyncSession, org_id: int, identity: Identity) -> _Resolved:
    user_ids, wa_ids = identity.user_ids, identity.wa_ids
    named: dict[str, Any] = {"org": org_id}
    if user_ids:
        named["user_ids"] = sorted(user_ids)
    if wa_ids:
        named["wa_ids"] = sorted(wa_ids)
    found_rows = list((await (await core_connection(session)).execute(
        _NAMING[(bool(user_ids), bool(wa_ids))], named)).all())
    same: list[Row[Any]] = []
    for row in found_rows:
        # A row with another BSUID is another person who had this number before: not this customer.
        # Unless Meta says this number was the sender's until now (`user_changed_number`): a number
        # change regenerates the BSUID.
        if row.user_id in user_ids or row.user_id is None or not user_ids or (
                identity.previous_wa_id is not None and row.wa_id == identity.previous_wa_id):
            same.append(row)
    final_user = identity.user_id or next((r.user_id for r in same if r.user_id), None)
    final_wa = identity.wa_id or next((r.wa_id for r in same if r.wa_id), None)
    keep = {r.id for r in same}
    # A number is held by at most one row (unique index). When it is one this identity names, the query
    # above found its holder; otherwise it came from one of `same`. Only another holder must let it go.
    released = final_wa is not None and any(r.wa_id == final_wa and r.id not in keep for r in found_rows)
    if released:
        assert final_wa is not None
        await _release_number(session, org_id, final_wa, keep=keep)
    now = utcnow()
    if not same:
        values = {"org_id": org_id, "user_id": final_user, "wa_id": final_wa, "username": identity.username,
                  "name": identity.name, "created_at": now, "updated_at": now}
        if final_user is not None:
            await insert_ignoring_duplicates(session, Customer, [values], conflict_on=["org_id", "user_id"],
                                             index_where=_HAS_USER_ID)
            found = await _rows(session, org_id, Customer.user_id == final_user)
        else:
            await insert_ignoring_duplicates(session, Customer, [values], conflict_on=["org_id", "wa_id"],
                                             index_where=_HAS_WA_ID)
            found = await _rows(session, org_id, Customer.wa_id == final_wa)
        return _Resolved(CustomerRef.of(found[0]), touched_only_itself=not released)
    survivor, *others = same  # ordered by id: the older row survives
    username = identity.username or next((r.username for r in same if r.username), None)
    name = identity.name or next((r.name for r in same if r.name), None)
    for other in others:
        await _merge(session, other.id, survivor.id)
    ref = CustomerRef(id=survivor.id, user_id=final_user, wa_id=final_wa, username=username, name=name)
    written = bool(others) or ref != CustomerRef.of(survivor)
    if written:
        # `updated_at` says when the identity last changed: an unchanged one is not written again.
        await session.execute(update(Customer).where(Customer.id == survivor.id).values(
            user_id=final_user, wa_id=final_wa, username=username, name=name, updated_at=now))
    return _Resolved(ref, touched_only_itself=not released and not others, changed=written)


async def _release_number(session: AsyncSession, org_id: int, wa_id: str, keep: set[int]) -> None:
    """The number now belongs to this customer: another row holding it (another BSUID) lets it go."""
    await session.execute(update(Customer).where(
        Customer.org_id == org_id, Customer.wa_id == wa_id, Customer.id.not_in(keep),
    ).values(wa_id=None, updated_at=utcnow()))


async def _merge(session: AsyncSession, loser: int, survivor: int) -> None:
    """Fold `loser` into `survivor` (see the module's docstring for what moves and what stays)."""
    now = utcnow()
    # Identifiers first, so the survivor can take them without touching the unique indexes twice.
    await session.execute(update(Customer).where(Customer.id == loser).values(
        user_id=None, wa_id=None, merged_into=survivor, updated_at=now))
    await session.execute(update(Customer).where(Customer.merged_into == loser).values(merged_into=survivor))
    await session.execute(update(InboundMessage).where(InboundMessage.customer_id == loser)
                          .values(customer_id=survivor))
    await session.execute(update(Transaction).where(Transaction.customer_id == loser, Transaction.state == "closed")
                          .values(customer_id=survivor))
    # Sticky memory: per inbox, the more recent of the two memories wins.
    mine = {row.inbox_id: row for row in (await session.scalars(
        select(StickyAgent).where(StickyAgent.customer_id == survivor))).all()}
    for theirs in (await session.scalars(select(StickyAgent).where(StickyAgent.customer_id == loser))).all():
        kept = mine.get(theirs.inbox_id)
        if kept is None:
            session.add(StickyAgent(inbox_id=theirs.inbox_id, customer_id=survivor, user_id=theirs.user_id,
                                    updated_at=theirs.updated_at))
        elif theirs.updated_at > kept.updated_at:
            kept.user_id, kept.updated_at = theirs.user_id, theirs.updated_at
        await session.delete(theirs)
    await session.flush()
