"""Engine and session factory for the async store (SQLite embedded, PostgreSQL for clusters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from store.sqlite_writers import take_turns


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes concurrent writers (the gateway
    # and the actor processes) wait for the lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One engine per process; `session()` yields a session that commits or rolls back."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10, hold_connections: bool = True) -> None:
        """`hold_connections=False`: a PostgreSQL connection is opened for each session and closed after it,
        so a process that is mostly idle (an agent actor) holds none between its steps."""
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        path = url.split("///", 1)[-1]
        file_backed = is_sqlite(url) and bool(path) and ":memory:" not in path
        if is_sqlite(url):
            # No statement cache: writers' turns are taken where SQLite prepares a statement.
            kwargs["connect_args"] = {"timeout": 30, "cached_statements": 0}
            if file_backed:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # SQLite has one writer at a time whatever the pool; the pool only bounds waiting readers.
                kwargs.update(pool_size=pool_size, max_overflow=2 * pool_size)
        elif not hold_connections:
            kwargs.update(poolclass=NullPool)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if is_sqlite(url):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        if file_backed:
            take_turns(self.engine, path, wait_s=30.0)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()
