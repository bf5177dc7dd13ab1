"""The agent actor's store: its few statements as plain SQL on the database drivers, without SQLAlchemy.

Agents are the many processes (one Ray actor each). SQLAlchemy, its ORM and the store's mapped tables
cost ~26 MiB in every one of them, against ~48 MiB for an empty Ray actor, so an agent's process loads
only a driver (`sqlite3`, or `asyncpg` for PostgreSQL) and the statements below. They act on the tables
of `store.tables` and write values as SQLAlchemy writes them there (UTC datetimes, JSON text), so the
gateway and the inboxes read an agent's rows through the ORM unchanged (tests/test_agent_store.py checks
both ways, on both backends).

Each step is written once, as a coroutine against `_Tx`. On PostgreSQL it runs on an asyncpg connection,
in the shared store actor the agent sends it to (`actors/agent_store_actor.py`: the agents' connections
do not grow with the agents) or in the agent itself; on SQLite it runs whole in a worker thread of the
agent (its awaits never suspend), a write step taking the writers' turn first like every other SQLite
writer (`store.sqlite_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from store.clock import as_utc, from_stored, utcnow
from store.coroutines import not_abandoned, run_to_end
from store.errors import StoreUnavailable, means_unavailable
from store.in_lists import in_batches
from store.sqlite_file import PRAGMAS, TURN_WAIT_S, WriterTurn, lock_path_of, sqlite_file_path

T = TypeVar("T")

# The columns of `agent_states` a step may set (`AgentStore.commit`): their names go into the SQL.
STATE_COLUMNS = frozenset({"status", "status_reason", "status_changed_at", "available_since", "last_chat_end_at",
                           "missed_in_a_row", "max_concurrent"})
_STATE_READ = "status, status_reason, max_concurrent, available_since, last_chat_end_at, missed_in_a_row, epoch"
_EVENT_READ = "SELECT id, kind, payload, created_at FROM agent_events"
# SQLite: worker threads (a connection each) running whole steps: an agent's steps follow each other (its
# step lock), and only its stream's reads and snapshot pushes run beside them.
_SQLITE_THREADS = 2
# Each connection's page cache, in KiB (SQLite's default is 2 MiB): an agent reads a few indexed rows, and
# the cache is private memory of every agent process.
_SQLITE_CACHE_KIB = 256
# PostgreSQL: connections of one store at once, the kept one and one more while two steps overlap.
_POSTGRES_CONNECTIONS = 2
_CONNECT_TIMEOUT_S = 10.0


class _StaleConnection(Exception):
    """A kept connection failed at BEGIN: it died while idle, and nothing was done on it."""


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


class _Tx(Protocol):
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


Step = Callable[[_Tx], Coroutine[Any, Any, T]]


# ---------------------------------------------------------------- the steps


async def _load(tx: _Tx, org_id: int, user_id: int, recent: int, work_kinds: Sequence[str],
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


async def _work(tx: _Tx, user_id: int) -> tuple[dict[int, int], list[StoredOffer]]:
    rows = await tx.rows("SELECT id, inbox_id, state, offer_id, offer_expires_at FROM transactions "
                         "WHERE (agent_id = ? AND state = 'assigned') OR (offered_to = ? AND state = 'offered')",
                         user_id, user_id)
    active = {int(tx_id): int(inbox_id) for tx_id, inbox_id, state, _, _ in rows if state == "assigned"}
    offers = [StoredOffer(offer_id or f"{tx_id}.0", int(tx_id), int(inbox_id), tx.when(expires))
              for tx_id, inbox_id, state, offer_id, expires in rows if state == "offered"]
    return active, offers


async def _commit(tx: _Tx, org_id: int, user_id: int, state: dict[str, Any] | None,
                  events: Sequence[tuple[str, dict[str, Any]]], at: datetime, locked: bool = False) -> list[int]:
    if events and tx.stream_lock_sql is not None and not locked:
        await tx.execute(tx.stream_lock_sql, user_id)
    if state:
        columns = sorted(state)
        await tx.execute(f"UPDATE agent_states SET {', '.join(f'{c} = ?' for c in columns)} WHERE user_id = ?",
                         *(state[c] for c in columns), user_id)
    return await tx.insert_events(org_id, user_id, events, at) if events else []


async def _commit_and_read(tx: _Tx, org_id: int, user_id: int, state: dict[str, Any] | None,
                           events: Sequence[tuple[str, dict[str, Any]]], at: datetime,
                           after_id: int) -> list[StoredEvent]:
    """`_commit`, then every event of the user after `after_id` (its own and those other writers appended:
    the gateway shows follow-ups at intake), in id order."""
    await _commit(tx, org_id, user_id, state, events, at)
    return await _events(tx, f"{_EVENT_READ} WHERE user_id = ? AND id > ? ORDER BY id", (user_id, after_id))


async def _deliver_and_read(tx: _Tx, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
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


async def _one_value(tx: _Tx, sql: str, args: Sequence[Any]) -> Any:
    rows = await tx.rows(sql, *args)
    return rows[0][0] if rows else None


async def _rows(tx: _Tx, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    return await tx.rows(sql, *args)


async def _events(tx: _Tx, sql: str, args: Sequence[Any]) -> list[StoredEvent]:
    return [_event(tx, row) for row in await tx.rows(sql, *args)]


def _event(tx: _Tx, row: tuple[Any, ...]) -> StoredEvent:
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


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


def open_agent_store(url: str, *, linger_s: float, name: str, connections: int = _POSTGRES_CONNECTIONS,
                     keep: int = 1) -> AgentStore:
    """The store at a `WA_ROUTER_DATABASE_URL`. PostgreSQL: at most `connections` at once, named `name`
    (`application_name`); up to `keep` are kept between steps, each closed once unused for `linger_s` (0: a
    connection per step)."""
    if url.startswith("sqlite"):
        path = sqlite_file_path(url)
        if path is None:
            raise ValueError("an agent actor needs the store's file: an in-memory SQLite database is the gateway's own")
        return _SqliteStore(path)
    if is_postgres(url):
        return _PostgresStore(url, linger_s=linger_s, name=name, connections=connections, keep=keep)
    raise ValueError(f"agent actors support SQLite and PostgreSQL, not {url.split(':', 1)[0]}")


# ---------------------------------------------------------------- SQLite


def _sqlite_time(value: datetime) -> str:
    # As SQLAlchemy stores a DateTime on SQLite: UTC, no zone, always microseconds.
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_args(args: Sequence[Any]) -> list[Any]:
    return [_sqlite_time(a) if isinstance(a, datetime) else a for a in args]


class _SqliteTx:
    message_id_sql = "json_extract(payload, '$.message.id')"
    message_direction_sql = "json_extract(payload, '$.message.direction')"
    first_message_id_sql = "json_extract(payload, '$.first_message.id')"
    stream_lock_sql: str | None = None
    transaction_id_sql = "json_extract(payload, '$.transaction_id')"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, _sqlite_args(args)).fetchall()

    async def execute(self, sql: str, *args: Any) -> None:
        self._connection.execute(sql, _sqlite_args(args))

    async def insert_events(self, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
                            at: datetime) -> list[int]:
        # In-process: a statement per event costs no round trip, and lastrowid keeps the order.
        ids = []
        for kind, payload in events:
            cursor = self._connection.execute(
                "INSERT INTO agent_events (org_id, user_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                (org_id, user_id, kind, json.dumps(payload), _sqlite_time(at)))
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        return ids

    def when(self, value: Any) -> datetime | None:
        return None if value is None else from_stored(datetime.fromisoformat(value))


class _SqliteStore(AgentStore):
    reads_from_any_loop = True

    def __init__(self, path: str) -> None:
        self._path = path
        self._turns = lock_path_of(path)
        self._threads: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit mode: each step issues its own BEGIN and COMMIT.
            connection = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                connection.execute(pragma)
            connection.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
            self._local.connection = connection
            self._opened.append(connection)
        return connection

    def _run_now(self, step: Step[T], write: bool) -> T:
        connection = self._connection()
        turn = WriterTurn(self._turns, wait_s=TURN_WAIT_S) if write else None
        try:
            if turn is not None:
                turn.take()
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = run_to_end(step(_SqliteTx(connection)))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc) or "unable to open" in str(exc):
                raise StoreUnavailable(f"SQLite: {exc}") from exc
            raise
        finally:
            if turn is not None:
                turn.release()  # after the commit or rollback

    async def _run(self, step: Step[T], write: bool = False) -> T:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(_SQLITE_THREADS, thread_name_prefix="agent-store")
        return await not_abandoned(asyncio.get_running_loop().run_in_executor(
            self._threads, self._run_now, step, write))

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        for connection in self._opened:
            connection.close()
        self._opened.clear()
        self._local = threading.local()


# ---------------------------------------------------------------- PostgreSQL


def _numbered(sql: str) -> str:
    """`?` parameters as asyncpg's `$1`, `$2`, ... (the statements hold no literal question mark)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


class _PostgresTx:
    message_id_sql = "(payload -> 'message' ->> 'id')"
    message_direction_sql = "(payload -> 'message' ->> 'direction')"
    first_message_id_sql = "(payload -> 'first_message' ->> 'id')"
    stream_lock_sql: str | None = "SELECT 1 FROM agent_states WHERE user_id = ? FOR UPDATE"
    transaction_id_sql = "(payload ->> 'transaction_id')"

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._connection.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._connection.execute(_numbered(sql), *args)

    async def insert_events(self, org_id: int, user_id: int, events: Sequence[tuple[str, dict[str, Any]]],
                            at: datetime) -> list[int]:
        # One round trip for all of a step's events. Ids come from the sequence as the rows are inserted, in
        # the order of `n`: sorted, they are the events' ids in order.
        rows = await self._connection.fetch(
            "INSERT INTO agent_events (org_id, user_id, kind, payload, created_at) "
            "SELECT $1::bigint, $2::bigint, e.kind, e.payload::json, $5::timestamptz "
            "FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS e(kind, payload, n) ORDER BY e.n RETURNING id",
            org_id, user_id, [kind for kind, _ in events], [json.dumps(payload) for _, payload in events], at)
        return sorted(int(r[0]) for r in rows)

    def when(self, value: Any) -> datetime | None:
        return None if value is None else from_stored(value)


def _asyncpg_dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if "+" in scheme else url


class _PostgresStore(AgentStore):
    """At most `connections` connections at once. Up to `keep` of them are kept between steps, each closed once
    unused for `linger_s` (0: none kept), so an idle store holds none; a step finding no kept connection free
    opens one, closed after it when `keep` are kept already."""

    def __init__(self, url: str, *, linger_s: float, name: str, connections: int = _POSTGRES_CONNECTIONS,
                 keep: int = 1) -> None:
        import asyncpg  # here: a SQLite deployment never loads it

        if not 1 <= keep <= connections:
            raise ValueError(f"keep ({keep}) must be between 1 and connections ({connections})")
        self._asyncpg = asyncpg
        self._dsn = _asyncpg_dsn(url)
        self._linger_s = linger_s
        self._name = name[:63]  # PostgreSQL's limit for application_name
        self._connections = connections
        self._keep = keep if linger_s > 0 else 0
        self._slots: asyncio.Semaphore | None = None
        # Kept connections free for a step, each with when its last step ended (the most recent last).
        self._idle: list[tuple[Any, float]] = []
        self._release: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _unavailable(self, exc: BaseException) -> bool:
        """Connection trouble, the server out of connections or shutting down (`store.errors`)."""
        if isinstance(exc, (OSError, TimeoutError, self._asyncpg.InterfaceError, self._asyncpg.InternalClientError)):
            return True
        return means_unavailable(str(getattr(exc, "sqlstate", "") or ""))

    async def _connect(self) -> Any:
        try:
            return await self._asyncpg.connect(self._dsn, timeout=_CONNECT_TIMEOUT_S,
                                               server_settings={"application_name": self._name})
        except Exception as exc:
            if self._unavailable(exc):
                raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
            raise

    async def _transaction(self, connection: Any, step: Step[T], fresh: bool) -> T:
        try:
            # Both can fail on a kept connection that died while idle: asyncpg may already know it is closed.
            transaction = connection.transaction()
            await transaction.start()
        except Exception as exc:
            if not fresh:  # nothing was done on it: another connection may do the step
                raise _StaleConnection from exc
            raise
        try:
            result = await step(_PostgresTx(connection))
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        await transaction.commit()
        return result

    async def _run(self, step: Step[T], write: bool = False) -> T:
        return await not_abandoned(self._run_now(step))

    async def _run_now(self, step: Step[T]) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._connections)
        async with self._slots:
            while self._idle:
                connection, _ = self._idle.pop()
                try:
                    return await self._step_on(connection, step, fresh=False)
                except _StaleConnection:
                    pass  # it died while idle (a server restart, a killed backend): nothing was done on it
            return await self._step_on(await self._connect(), step, fresh=True)

    async def _step_on(self, connection: Any, step: Step[T], fresh: bool) -> T:
        """The step in a transaction on `connection`, which is kept afterwards or closed."""
        sound = False
        try:
            result = await self._transaction(connection, step, fresh)
            sound = True
            return result
        except _StaleConnection:
            raise
        except Exception as exc:
            # A statement the server refused leaves the connection usable (its transaction rolled back); after
            # anything else (connection trouble, a cancelled call mid-statement) it is not trusted again.
            unavailable = self._unavailable(exc)
            sound = isinstance(exc, self._asyncpg.PostgresError) and not unavailable
            if unavailable:
                raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
            raise
        finally:
            if sound and len(self._idle) < self._keep and not connection.is_closed():
                self._idle.append((connection, time.monotonic()))
                self._arm_release()
            else:
                self._close(connection)

    def _arm_release(self) -> None:
        if self._release is None and self._idle:
            oldest = min(used for _, used in self._idle)
            delay = max(0.0, oldest + self._linger_s - time.monotonic())
            self._release = asyncio.get_running_loop().call_later(delay, self._release_unused)

    def _release_unused(self) -> None:
        """Close the kept connections unused for `linger_s`; check again when the next one will be."""
        self._release = None
        cutoff = time.monotonic() - self._linger_s
        for connection, used in [entry for entry in self._idle if entry[1] <= cutoff]:
            self._idle.remove((connection, used))
            self._close(connection)
        self._arm_release()

    def _close(self, connection: Any) -> None:
        """Close in the background (a polite goodbye to the server); a broken connection is just dropped."""
        if connection.is_closed():
            return
        task = asyncio.ensure_future(connection.close(timeout=5))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        if self._release is not None:
            self._release.cancel()
            self._release = None
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            self._close(connection)
        if self._closing:
            await asyncio.wait(set(self._closing))
