"""The agent store on PostgreSQL: each step on an asyncpg connection, in the shared store actor the agent sends it to
(`actors/agent_store_actor.py`: the agents' connections do not grow with the agents) or in the agent itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from store.agent_store_steps import AgentStore, Step, T
from store.clock import from_stored
from store.coroutines import not_abandoned
from store.errors import StoreUnavailable, means_unavailable, sqlstate_of

# Connections of one store at once, the kept one and one more while two steps overlap.
POSTGRES_CONNECTIONS = 2
_CONNECT_TIMEOUT_S = 10.0


class _StaleConnection(Exception):
    """A kept connection failed at BEGIN: it died while idle, and nothing was done on it."""



def _numbered(sql: str) -> str:
    """`?` parameters as asyncpg's `$1`, `$2`, ... (the statements hold no literal question mark)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


class PostgresTx:
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


def asyncpg_dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if "+" in scheme else url


class PostgresAgentStore(AgentStore):
    """At most `connections` connections at once. Up to `keep` of them are kept between steps, each closed once
    unused for `linger_s` (0: none kept), so an idle store holds none; a step finding no kept connection free
    opens one, closed after it when `keep` are kept already."""

    def __init__(self, url: str, *, linger_s: float, name: str, connections: int = POSTGRES_CONNECTIONS,
                 keep: int = 1) -> None:
        import asyncpg  # here: a SQLite deployment never loads it

        if not 1 <= keep <= connections:
            raise ValueError(f"keep ({keep}) must be between 1 and connections ({connections})")
        self._asyncpg = asyncpg
        self._dsn = asyncpg_dsn(url)
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
        return means_unavailable(sqlstate_of(exc))

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
            result = await step(PostgresTx(connection))
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
