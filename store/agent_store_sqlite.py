"""The agent store on SQLite: each step runs whole in a worker thread of the agent (its awaits never suspend), a
write step taking the writers' turn first like every other SQLite writer (`store.sqlite_file`)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from store.agent_store_steps import AgentStore, Step, T
from store.clock import as_utc, from_stored
from store.coroutines import not_abandoned, run_to_end
from store.errors import StoreUnavailable
from store.sqlite_file import PRAGMAS, TURN_WAIT_S, WriterTurn, lock_path_of

# Worker threads (a connection each) running whole steps: an agent's steps follow each other (its step lock), and
# only its stream's reads and snapshot pushes run beside them.
_SQLITE_THREADS = 2
# Each connection's page cache, in KiB (SQLite's default is 2 MiB): an agent reads a few indexed rows, and
# the cache is private memory of every agent process.
_SQLITE_CACHE_KIB = 256


def _sqlite_time(value: datetime) -> str:
    # As SQLAlchemy stores a DateTime on SQLite: UTC, no zone, always microseconds.
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_args(args: Sequence[Any]) -> list[Any]:
    return [_sqlite_time(a) if isinstance(a, datetime) else a for a in args]


class SqliteTx:
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


class SqliteAgentStore(AgentStore):
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
                result = run_to_end(step(SqliteTx(connection)))
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
