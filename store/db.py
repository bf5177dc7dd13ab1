"""Engine and session factory for the async store (SQLite embedded, PostgreSQL for clusters)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from store.coroutines import not_abandoned, run_to_end
from store.idle_ping import ping_idle_connections
from store.sqlite_file import PRAGMAS, TURN_WAIT_S, WriterTurn, lock_path_of, sqlite_file_path
from store.sqlite_writers import take_turns, take_turns_when_writing, turn_of
from store.thread_session import ThreadSession

T = TypeVar("T")

# Threads that run whole SQLite write transactions (`Database.write`); they mostly wait for the turn.
_SQLITE_WRITE_THREADS = 4
# Threads that run whole SQLite read steps (`Database.read`), at most this many at once per process.
_SQLITE_READ_THREADS = 4


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


class Database:
    """One engine per process; `session()` yields a session that commits or rolls back."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10, pool_timeout_s: float = 30.0,
                 lock_wait_s: float = 0.0) -> None:
        """PostgreSQL: `pool_size` connections kept, as many more while steps overlap (closed after use); a step
        waits `pool_timeout_s` for a free one, then fails with SQLAlchemy's `TimeoutError` (the gateway answers
        503); a statement waits at most `lock_wait_s` for a lock (0: no bound; the server's `lock_timeout`, which
        a transaction may lower for itself), then fails with SQLSTATE 55P03 (the gateway answers 503). Agent actors,
        which are many and mostly idle, use `store.agent_store` instead."""
        self.url = url
        self.pool_timeout_s = pool_timeout_s
        kwargs: dict[str, Any] = {"echo": echo}
        path = sqlite_file_path(url) if is_sqlite(url) else None  # file-backed SQLite
        if is_sqlite(url):
            # No statement cache: writers' turns are taken where SQLite prepares a statement.
            kwargs["connect_args"] = {"timeout": 30, "cached_statements": 0}
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # SQLite has one writer at a time whatever the pool; the pool only bounds waiting readers.
                kwargs.update(pool_size=pool_size, max_overflow=2 * pool_size, pool_timeout=pool_timeout_s)
        else:
            # Last in, first out: the connections in use stay few and warm, the others idle (and are pinged when
            # taken again, `store.idle_ping`).
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout_s, pool_use_lifo=True)
            if lock_wait_s > 0:
                # Set when each connection opens: no statement more per transaction.
                kwargs["connect_args"] = {"server_settings": {"lock_timeout": f"{max(1, round(lock_wait_s * 1000))}ms"}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if is_sqlite(url):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            ping_idle_connections(self.engine)
        if path is not None:
            take_turns(self.engine, path, wait_s=TURN_WAIT_S)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # File-backed SQLite: `write` and `read` run on synchronous engines of their own, in worker threads.
        self._writer: Engine | None = None
        self._writer_threads: ThreadPoolExecutor | None = None
        self._reader: Engine | None = None
        self._reader_threads: ThreadPoolExecutor | None = None
        self._turns_path = ""
        if path is not None:
            self._turns_path = lock_path_of(path)
            # At most one connection per thread. The writer takes its turn itself (`_write_now`); a read
            # step that writes after all takes it at its first write statement, like an async session.
            self._writer = _thread_engine(path, _SQLITE_WRITE_THREADS)
            # No statement cache on the reader: the turn's authorizer must see every statement prepared.
            self._reader = _thread_engine(path, _SQLITE_READ_THREADS, cached_statements=0)
            take_turns_when_writing(self._reader, path, wait_s=TURN_WAIT_S)

    @property
    def one_writer(self) -> bool:
        """SQLite: one write transaction at a time in the whole store, whichever process writes."""
        return is_sqlite(self.url)

    @property
    def reads_from_any_loop(self) -> bool:
        """`read` may be awaited on any event loop of the process (it runs in threads, not on an async engine)."""
        return self._reader is not None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def write(self, statements: Callable[[Connection], T]) -> T:
        """Run `statements` (Core, on a synchronous connection) as one transaction; its result once committed.

        A step's writes go here after its reads. On file-backed SQLite the whole transaction runs in one
        worker thread, from taking the writers' turn to the commit: the single write lock is held for
        the statements only, never across this process's event loop (through aiosqlite every statement
        is a round trip through the loop, and a busy loop held the lock for ~11 ms a step at 40 msg/s).
        Elsewhere it runs on the async engine, statement by statement. Once started it is not
        abandoned: a caller cancelled meanwhile is cancelled only after the transaction ended.
        """
        if self._writer is None:
            async with self.engine.begin() as connection:
                return await connection.run_sync(statements)
        if self._writer_threads is None:
            self._writer_threads = ThreadPoolExecutor(_SQLITE_WRITE_THREADS, thread_name_prefix="sqlite-write")
        return await not_abandoned(
            asyncio.get_running_loop().run_in_executor(self._writer_threads, self._write_now, statements))

    async def write_session(self, step: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
        """Run an async `step` written against a session as one transaction; its result once committed.

        Elsewhere than file-backed SQLite this is `session()`. There, like `write`, the step runs whole in
        a worker thread, on a synchronous session behind the same methods (`store.thread_session`): it
        may await only the session's own methods.
        """
        if self._writer is None:
            async with self.session() as session:
                return await step(session)

        def statements(connection: Connection) -> T:
            with Session(bind=connection, expire_on_commit=False) as session:
                # ThreadSession offers the AsyncSession methods the store's write steps use.
                result = run_to_end(step(cast(AsyncSession, ThreadSession(session))))
                session.flush()
                return result

        return await self.write(statements)

    async def read(self, step: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
        """Run an async `step` written against a session as one read transaction; its result.

        Elsewhere than file-backed SQLite this is `session()`. There the step runs whole in a worker
        thread on a synchronous session (`store.thread_session`), so it may await only the session's own
        methods: one thread hop for the step instead of one per statement through aiosqlite, and no
        greenlet switch per statement (measured: 3 selects cost 0.68 ms of CPU this way, 2.25 ms through
        an async session). Objects it returns are detached and loaded (no lazy loads afterwards).
        """
        if self._reader is None:
            async with self.session() as session:
                return await step(session)
        if self._reader_threads is None:
            self._reader_threads = ThreadPoolExecutor(_SQLITE_READ_THREADS, thread_name_prefix="sqlite-read")
        return await asyncio.get_running_loop().run_in_executor(self._reader_threads, self._read_now, step)

    def _read_now(self, step: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
        assert self._reader is not None
        with self._reader.connect() as connection:
            turn = turn_of(connection)
            try:
                with connection.begin(), Session(bind=connection, expire_on_commit=False) as session:
                    result = run_to_end(step(cast(AsyncSession, ThreadSession(session))))
                    session.flush()
                    return result
            finally:
                turn.release()  # after the commit or rollback, before the connection goes back to the pool

    def _write_now(self, statements: Callable[[Connection], T]) -> T:
        assert self._writer is not None
        turn = WriterTurn(self._turns_path, wait_s=TURN_WAIT_S)
        turn.take()
        try:
            with self._writer.begin() as connection:
                return statements(connection)
        finally:
            turn.release()

    async def dispose(self) -> None:
        await self.engine.dispose()
        for engine in (self._writer, self._reader):
            if engine is not None:
                engine.dispose()
        for threads in (self._writer_threads, self._reader_threads):
            if threads is not None:
                threads.shutdown(wait=False)


def _thread_engine(path: str, connections: int, **connect_args: Any) -> Engine:
    """A synchronous engine on the SQLite file, for worker threads (one connection per thread)."""
    engine = create_engine(f"sqlite:///{path}", pool_size=connections, max_overflow=0,
                           connect_args={"timeout": 30, "check_same_thread": False, **connect_args})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine
