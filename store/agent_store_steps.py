"""The agent actor's store, the part both drivers share: its rows, the statements of each step and the interface.

Each step is written once, as a coroutine against `Tx` (one transaction, SQL with `?` parameters); the
backends (`store.agent_store_sqlite`, `store.agent_store_postgres`) run it on their driver, and
`store.agent_store.open_agent_store` picks the backend of a database URL.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from store.clock import utcnow
from store.in_lists import in_batches

T = TypeVar("T")

# The columns of `agent_states` a step may set (`AgentStore.commit`): their names go into the SQL.
STATE_COLUMNS = frozenset({"status", "status_reason", "status_changed_at", "available_since", "last_chat_end_at",
                           "missed_in_a_row", "max_concurrent"})
_STATE_READ = "status, status_reason, max_concurrent, available_since, last_chat_end_at, missed_in_a_row, epoch"
_EVENT_READ = "SELECT id, kind, payload, created_at FROM agent_events"

@dataclass(frozen=True)
class AgentRow:
    status: str
    status_reason: str | None
    max_concurrent: int
    available_since: datetime | None
    last_chat_end_at: datetime | None
    missed_in_a_row: int
    epoch: int


@dataclass(frozen=True)
class StoredOffer:
    offer_id: str
    transaction_id: int
    inbox_id: int
    expires_at: datetime | None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime


# An event as another writer's commit stored it on an agent's stream, linked to the stream's event before it: (that
# event's id, 0 for none, the event's id, kind, payload as read back, created_at in ISO format). The writer tells
# the agent these (`store.agent_streams`), and the agent takes them without a read when the link meets what it knows.
LinkedEvent = tuple[int, int, str, dict[str, Any], str]
# Each agent's events appended by one commit, in stream order.
Told = dict[int, list[LinkedEvent]]


def told_rows(told: Sequence[LinkedEvent], after_id: int) -> list[StoredEvent] | None:
    """The told events after `after_id` (the newest event its reader knows) as a read would give them, in id order;
    None when they do not follow it (an event between is missing: the reader reads its stream instead)."""
    rows: list[StoredEvent] = []
    for before, event_id, kind, payload, stamp in sorted(told, key=lambda event: event[1]):
        if event_id <= after_id:
            continue  # known already (a retried tell, or read meanwhile)
        if before != after_id:
            return None
        rows.append(StoredEvent(event_id, kind, payload, datetime.fromisoformat(stamp)))
        after_id = event_id
    return rows


@dataclass(frozen=True)
class LoadedAgent:
    state: AgentRow
    active: dict[int, int]  # transaction id -> inbox id
    offers: list[StoredOffer]
    recent: list[StoredEvent]  # newest first
    work_events: list[StoredEvent]  # newest first
    delivered: list[tuple[int, int]]  # (transaction id, customer message id) the stream has shown, newest first


class Tx(Protocol):
    """One transaction, in SQL with `?` parameters; values converted as the backend stores them."""

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def insert_events(self, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
                            at: datetime) -> list[int]: ...

    def when(self, value: Any) -> datetime | None: ...

    # The SQL expressions of a `message` event's message id and direction, and of the first message an `assigned` or
    # `transferred` event shows (the backends' JSON operators differ).
    message_id_sql: str
    message_direction_sql: str
    first_message_id_sql: str
    # Taken first by every transaction appending to a user's stream (None: SQLite, whose writers take turns), so
    # a user's event ids commit in id order and a reader that saw an id never meets a smaller one later.
    stream_lock_sql: str | None
    transaction_id_sql: str


Step = Callable[[Tx], Coroutine[Any, Any, T]]


# ---------------------------------------------------------------- the steps


async def _load(tx: Tx, org_id: int, user_id: int, recent: int, work_kinds: Sequence[str],
                work_history: int, delivered_history: int = 0) -> LoadedAgent | None:
    """The agent's row under a new activation epoch (a user never seen before starts offline), its work, its
    latest events and the messages it last delivered; None when the user is not this organization's."""
    owner = await tx.rows("SELECT org_id FROM users WHERE id = ?", user_id)
    if not owner or owner[0][0] != org_id:
        return None
    await tx.execute("INSERT INTO agent_states (user_id, org_id, status, max_concurrent, status_changed_at, "
                     "missed_in_a_row, epoch) VALUES (?, ?, 'offline', 1, ?, 0, 0) ON CONFLICT (user_id) DO NOTHING",
                     user_id, org_id, utcnow())
    (row,) = await tx.rows(f"UPDATE agent_states SET epoch = epoch + 1 WHERE user_id = ? RETURNING {_STATE_READ}",
                           user_id)
    status, reason, max_concurrent, available_since, last_chat_end_at, missed, epoch = row
    state = AgentRow(status, reason, int(max_concurrent), tx.when(available_since), tx.when(last_chat_end_at),
                     int(missed), int(epoch))
    active, offers = await _work(tx, user_id)
    latest = await tx.rows(f"{_EVENT_READ} WHERE user_id = ? ORDER BY id DESC LIMIT ?", user_id, recent)
    kinds = ", ".join("?" for _ in work_kinds)
    work = await tx.rows(f"{_EVENT_READ} WHERE user_id = ? AND kind IN ({kinds}) ORDER BY id DESC LIMIT ?",
                         user_id, *work_kinds, work_history) if work_kinds else []
    # What the stream already shows: a delivery retried across a restart must not show a message twice, nor one
    # a claim's or transfer's confirm showed as the conversation's first.
    # Customer messages only: a reply's echo (`direction: outbound`) carries an outbox id, another id space.
    delivered = await tx.rows(
        f"SELECT {tx.transaction_id_sql}, CASE WHEN kind = 'message' THEN {tx.message_id_sql} "
        f"ELSE {tx.first_message_id_sql} END FROM agent_events WHERE user_id = ? AND ((kind = 'message' "
        f"AND coalesce({tx.message_direction_sql}, 'inbound') <> 'outbound') OR kind IN ('assigned', 'transferred')) "
        "ORDER BY id DESC LIMIT ?", user_id, delivered_history) if delivered_history else []
    return LoadedAgent(state, active, offers, [_event(tx, r) for r in latest], [_event(tx, r) for r in work],
                       [(int(t), int(m)) for (t, m) in delivered if t is not None and m is not None])


async def _work(tx: Tx, user_id: int) -> tuple[dict[int, int], list[StoredOffer]]:
    rows = await tx.rows("SELECT id, inbox_id, state, offer_id, offer_expires_at FROM transactions "
                         "WHERE (agent_id = ? AND state = 'assigned') OR (offered_to = ? AND state = 'offered')",
                         user_id, user_id)
    active = {int(tx_id): int(inbox_id) for tx_id, inbox_id, state, _, _ in rows if state == "assigned"}
    offers = [StoredOffer(offer_id or f"{tx_id}.0", int(tx_id), int(inbox_id), tx.when(expires))
              for tx_id, inbox_id, state, offer_id, expires in rows if state == "offered"]
    return active, offers


async def _commit(tx: Tx, org_id: int, user_id: int, state: dict[str, Any] | None,
                  events: Sequence[tuple[str, dict[str, Any]]], at: datetime, locked: bool = False) -> list[int]:
    if events and tx.stream_lock_sql is not None and not locked:
        await tx.execute(tx.stream_lock_sql, user_id)
    if state:
        columns = sorted(state)
        await tx.execute(f"UPDATE agent_states SET {', '.join(f'{c} = ?' for c in columns)} WHERE user_id = ?",
                         *(state[c] for c in columns), user_id)
    return await tx.insert_events(org_id, user_id, events, at) if events else []


async def _commit_and_read(tx: Tx, org_id: int, user_id: int, state: dict[str, Any] | None,
                           events: Sequence[tuple[str, dict[str, Any]]], at: datetime,
                           after_id: int) -> list[StoredEvent]:
    """`_commit`, then every event of the user after `after_id` (its own and those other writers appended:
    the gateway shows follow-ups at intake), in id order."""
    await _commit(tx, org_id, user_id, state, events, at)
    return await _events(tx, f"{_EVENT_READ} WHERE user_id = ? AND id > ? ORDER BY id", (user_id, after_id))


async def _deliver_and_read(tx: Tx, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
                            at: datetime, after_id: int) -> list[StoredEvent]:
    """`_commit_and_read` of customer messages' `message` events, each written only if its message is still
    attached to the event's transaction.

    A close hands the messages its agent's stream does not show to the customer's next conversation
    (`routing_repo.detach_messages`), and a delivery's commit may come after it (its answer late under load): the
    message would then be shown with the closed conversation and with the next one. So the two commits exclude
    each other per message: both take the agent's stream lock (PostgreSQL; SQLite's writers take turns, and this
    runs in a write transaction begun IMMEDIATE) and decide inside it, the close on the events, this on the
    attachment. A message handed on, or attached to another conversation since, is skipped (not shown, and not
    remembered as delivered with this one)."""
    if events and tx.stream_lock_sql is not None:
        await tx.execute(tx.stream_lock_sql, user_id)
    ids = sorted({int(payload["message"]["id"]) for _, payload in events})
    attached: dict[int, int] = {}
    for batch in in_batches(ids):
        rows = await tx.rows("SELECT id, transaction_id FROM inbound_messages WHERE id IN "
                             f"({', '.join('?' for _ in batch)}) AND transaction_id IS NOT NULL", *batch)
        attached.update({int(message_id): int(tx_id) for message_id, tx_id in rows})
    kept = [(kind, payload) for kind, payload in events
            if attached.get(int(payload["message"]["id"])) == int(payload["transaction_id"])]
    await _commit(tx, org_id, user_id, None, kept, at, locked=True)
    return await _events(tx, f"{_EVENT_READ} WHERE user_id = ? AND id > ? ORDER BY id", (user_id, after_id))


async def _one_value(tx: Tx, sql: str, args: Sequence[Any]) -> Any:
    rows = await tx.rows(sql, *args)
    return rows[0][0] if rows else None


async def _rows(tx: Tx, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    return await tx.rows(sql, *args)


async def _events(tx: Tx, sql: str, args: Sequence[Any]) -> list[StoredEvent]:
    return [_event(tx, row) for row in await tx.rows(sql, *args)]


def _event(tx: Tx, row: tuple[Any, ...]) -> StoredEvent:
    event_id, kind, payload, created_at = row
    at = tx.when(created_at)
    assert at is not None  # the column is NOT NULL
    return StoredEvent(int(event_id), kind, _document(payload), at)


def _document(value: Any) -> dict[str, Any]:
    """A JSON column as read: text from both drivers (asyncpg decodes no JSON without a codec)."""
    return json.loads(value) if isinstance(value, str | bytes) else value  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the store


class AgentStore:
    """An agent actor's reads and writes; each method is one transaction."""

    # Whether the methods may be awaited on any event loop of the process (else: one store per loop).
    reads_from_any_loop = False

    async def load(self, org_id: int, user_id: int, *, recent: int, work_kinds: Sequence[str],
                   work_history: int, delivered_history: int = 0) -> LoadedAgent | None:
        return await self._run(functools.partial(_load, org_id=org_id, user_id=user_id, recent=recent,
                                                 work_kinds=work_kinds, work_history=work_history,
                                                 delivered_history=delivered_history), write=True)

    async def commit(self, org_id: int, user_id: int, state: dict[str, Any] | None,
                     events: Sequence[tuple[str, dict[str, Any]]], at: datetime) -> list[int]:
        """Set `state`'s columns on the agent's row and append `events`: their ids, in order."""
        unknown = set(state or ()) - STATE_COLUMNS
        if unknown:
            raise ValueError(f"not a column an agent's step sets: {sorted(unknown)}")
        return await self._run(functools.partial(_commit, org_id=org_id, user_id=user_id, state=state,
                                                 events=events, at=at), write=True)

    async def commit_and_read(self, org_id: int, user_id: int, state: dict[str, Any] | None,
                              events: Sequence[tuple[str, dict[str, Any]]], at: datetime,
                              after_id: int) -> list[StoredEvent]:
        """`commit`, returning every event of the user after `after_id` once it committed (its own included)."""
        unknown = set(state or ()) - STATE_COLUMNS
        if unknown:
            raise ValueError(f"not a column an agent's step sets: {sorted(unknown)}")
        return await self._run(functools.partial(_commit_and_read, org_id=org_id, user_id=user_id, state=state,
                                                 events=events, at=at, after_id=after_id), write=True)

    async def deliver_and_read(self, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
                               at: datetime, after_id: int) -> list[StoredEvent]:
        """`commit_and_read` of customer messages' `message` events (payloads with `transaction_id` and
        `message.id`), skipping those whose message is no longer attached to that transaction."""
        return await self._run(functools.partial(_deliver_and_read, org_id=org_id, user_id=user_id, events=events,
                                                 at=at, after_id=after_id), write=True)

    async def work(self, user_id: int) -> tuple[dict[int, int], list[StoredOffer]]:
        """Active transactions (id -> inbox) and pending offers, as the inboxes committed them."""
        return await self._run(functools.partial(_work, user_id=user_id))

    async def missed_offers_before_away(self, org_id: int) -> int:
        value = await self._run(functools.partial(
            _one_value, sql="SELECT missed_offers_before_away FROM organizations WHERE id = ?", args=(org_id,)))
        return int(value or 0)

    async def served_inboxes(self, user_id: int) -> dict[int, str]:
        """The inboxes the agent serves, each with its assignment mode (what it decides on: `actors.agent_presence`)."""
        rows = await self._run(functools.partial(
            _rows, sql="SELECT m.inbox_id, i.assignment_mode FROM inbox_agents m JOIN inboxes i ON i.id = m.inbox_id "
                       "WHERE m.user_id = ?", args=(user_id,)))
        return {int(inbox_id): str(mode) for inbox_id, mode in rows}

    async def events_after(self, user_id: int, after_id: int, limit: int) -> list[StoredEvent]:
        return await self._run(functools.partial(
            _events, sql=f"{_EVENT_READ} WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
            args=(user_id, after_id, limit)))

    async def last_event_id(self, user_id: int) -> int:
        value = await self._run(functools.partial(
            _one_value, sql="SELECT max(id) FROM agent_events WHERE user_id = ?", args=(user_id,)))
        return int(value or 0)

    async def run(self, step: Step[T], write: bool = False) -> T:
        """A step built by another process's store (`actors.agent_store_actor`): only this module's steps."""
        if not isinstance(step, functools.partial) or step.func not in _STEPS:
            raise ValueError(f"not an agent store step: {step!r}")
        return await self._run(step, write)

    async def _run(self, step: Step[T], write: bool = False) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


_STEPS: frozenset[Callable[..., Any]] = frozenset({_load, _work, _commit, _commit_and_read, _deliver_and_read,
                                                   _one_value, _rows, _events})
