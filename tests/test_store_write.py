"""`Database.write`: a step's writes as one transaction, which on SQLite never holds the lock across the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


async def _notes(db: Database, table: str) -> list[str]:
    async with db.session() as session:
        return list((await session.execute(text(f"SELECT body FROM {table} ORDER BY body"))).scalars().all())


async def _create(db: Database, table: str) -> None:
    async with db.session() as session:
        await session.execute(text(f"CREATE TABLE {table} (body VARCHAR(20) PRIMARY KEY)"))


def test_a_writer_whose_event_loop_is_busy_does_not_hold_other_processes_writes(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    wrote = threading.Event()
    other_took: list[float] = []

    def first(connection: Connection) -> str:
        connection.execute(text("INSERT INTO notes VALUES ('first')"))
        wrote.set()
        return "first"

    def other_store_writes() -> None:
        async def run() -> None:
            other = Database(url, pool_size=1)
            started = time.monotonic()
            await other.write(lambda c: c.execute(text("INSERT INTO notes VALUES ('second')")))
            other_took.append(time.monotonic() - started)
            await other.dispose()
        asyncio.run(run())

    async def run() -> list[str]:
        db = Database(url, pool_size=1)
        try:
            await _create(db, "notes")
            pending = asyncio.ensure_future(db.write(first))
            await asyncio.sleep(0)  # handed to its thread
            assert wrote.wait(5)
            other = threading.Thread(target=other_store_writes)
            other.start()
            # The point: this event loop stays busy (blocked in join) until the other store's write is done,
            # so that write cannot have waited for anything this loop would do.
            other.join(30)
            assert not other.is_alive(), "the other store's write waited for this busy event loop"
            assert await pending == "first"
            return await _notes(db, "notes")
        finally:
            await db.dispose()

    # Not held up by this process's busy event loop: the first write's turn ended with its statements.
    assert asyncio.run(run()) == ["first", "second"]
    assert other_took


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_write_that_fails_leaves_nothing_and_the_next_one_goes_through(
        store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = _sqlite_url(tmp_path) if store == "sqlite" else request.getfixturevalue("postgres_url")
    table = f"notes_{uuid.uuid4().hex[:8]}"

    def half_then_fail(connection: Connection) -> None:
        connection.execute(text(f"INSERT INTO {table} VALUES ('half')"))
        raise ValueError("the step changed its mind")

    async def run() -> list[str]:
        db = Database(url, pool_size=1)
        try:
            await _create(db, table)
            with pytest.raises(ValueError, match="changed its mind"):
                await db.write(half_then_fail)
            await asyncio.wait_for(db.write(lambda c: c.execute(text(f"INSERT INTO {table} VALUES ('whole')"))), 5)
            return await _notes(db, table)
        finally:
            async with db.session() as session:
                await session.execute(text(f"DROP TABLE {table}"))
            await db.dispose()

    assert asyncio.run(run()) == ["whole"]


def test_a_cancelled_caller_is_cancelled_only_once_its_transaction_ended_whole(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)

    def slow(connection: Connection) -> None:
        connection.execute(text("INSERT INTO notes VALUES ('one')"))
        time.sleep(0.3)
        connection.execute(text("INSERT INTO notes VALUES ('two')"))

    async def run() -> tuple[float, list[str]]:
        db = Database(url, pool_size=1)
        try:
            await _create(db, "notes")
            started = time.monotonic()
            pending = asyncio.ensure_future(db.write(slow))
            await asyncio.sleep(0.1)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            return time.monotonic() - started, await _notes(db, "notes")
        finally:
            await db.dispose()

    waited, notes = asyncio.run(run())
    assert waited >= 0.3
    assert notes == ["one", "two"]


def test_a_session_step_runs_whole_in_the_write_thread_and_one_that_would_suspend_writes_nothing(
        tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)

    async def step(session: AsyncSession) -> str:
        await session.execute(text("INSERT INTO notes VALUES ('whole')"))
        return threading.current_thread().name

    async def suspends(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO notes VALUES ('half')"))
        await asyncio.sleep(0)  # would need an event loop: there is none in the write thread

    async def run() -> tuple[str, list[str]]:
        db = Database(url, pool_size=1)
        try:
            await _create(db, "notes")
            thread = await db.write_session(step)
            with pytest.raises(RuntimeError, match="suspends"):
                await db.write_session(suspends)
            return thread, await _notes(db, "notes")
        finally:
            await db.dispose()

    thread, notes = asyncio.run(run())
    assert thread.startswith("sqlite-write")
    assert notes == ["whole"]
