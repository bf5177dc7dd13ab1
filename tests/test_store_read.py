"""`Database.read`: a read step whole in a worker thread on SQLite (one hop, no greenlet), a session elsewhere."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.sqlite_file import lock_path_of


def _sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def _create(db: Database, table: str, *bodies: str) -> None:
    async with db.session() as session:
        await session.execute(text(f"CREATE TABLE {table} (body VARCHAR(20) PRIMARY KEY)"))
        for body in bodies:
            await session.execute(text(f"INSERT INTO {table} VALUES (:body)"), {"body": body})


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_read_step_answers_what_is_committed_on_either_store(
        store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite+aiosqlite:///{_sqlite_path(tmp_path)}" if store == "sqlite"
           else request.getfixturevalue("postgres_url"))
    table = f"notes_{uuid.uuid4().hex[:8]}"

    async def bodies(session: AsyncSession) -> tuple[list[str], str]:
        rows = (await session.execute(text(f"SELECT body FROM {table} ORDER BY body"))).scalars().all()
        return list(rows), threading.current_thread().name

    async def run() -> tuple[list[str], str]:
        db = Database(url, pool_size=1)
        try:
            await _create(db, table, "b", "a")
            return await db.read(bodies)
        finally:
            async with db.session() as session:
                await session.execute(text(f"DROP TABLE {table}"))
            await db.dispose()

    notes, thread = asyncio.run(run())
    assert notes == ["a", "b"]
    # File-backed SQLite: the whole step ran in a read thread, not on the event loop.
    assert thread.startswith("sqlite-read") == (store == "sqlite")


def test_reads_on_sqlite_run_beside_a_writer_holding_the_turn_and_from_any_event_loop(tmp_path: Path) -> None:
    path = _sqlite_path(tmp_path)

    async def count(session: AsyncSession) -> int:
        return int(await session.scalar(text("SELECT count(*) FROM notes")) or 0)

    async def run() -> tuple[int, float, int]:
        db = Database(f"sqlite+aiosqlite:///{path}", pool_size=1)
        try:
            await _create(db, "notes", "one", "two")
            assert db.reads_from_any_loop
            turn = os.open(lock_path_of(str(path)), os.O_RDWR | os.O_CREAT)
            fcntl.flock(turn, fcntl.LOCK_EX)  # another process's writer holds the turn meanwhile
            try:
                started = time.monotonic()
                counted = await asyncio.wait_for(db.read(count), 5)
                took = time.monotonic() - started
            finally:
                os.close(turn)
            # The same Database from another thread's event loop (an agent's stream readers do this).
            from_other_loop: list[int] = []
            other = threading.Thread(target=lambda: from_other_loop.append(asyncio.run(db.read(count))))
            other.start()
            other.join(5)
            return counted, took, from_other_loop[0]
        finally:
            await db.dispose()

    counted, took, from_other_loop = asyncio.run(run())
    assert counted == 2 and from_other_loop == 2
    assert took < 10  # a reader never waits for the writers' turn (held throughout; a writer would wait 30 s)


def test_a_read_step_that_writes_takes_the_writers_turn_and_commits(tmp_path: Path) -> None:
    path = _sqlite_path(tmp_path)

    async def adopt(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO notes VALUES ('adopted')"))

    async def run() -> tuple[float, list[str]]:
        db = Database(f"sqlite+aiosqlite:///{path}", pool_size=1)
        try:
            await _create(db, "notes")
            turn = os.open(lock_path_of(str(path)), os.O_RDWR | os.O_CREAT)
            fcntl.flock(turn, fcntl.LOCK_EX)
            pending = asyncio.ensure_future(db.read(adopt))
            await asyncio.sleep(0.4)
            assert not pending.done()  # its write waits for the turn another writer holds
            released = time.monotonic()
            os.close(turn)
            await asyncio.wait_for(pending, 5)
            waited_after_release = time.monotonic() - released
            async with db.session() as session:
                notes = list((await session.execute(text("SELECT body FROM notes"))).scalars().all())
            return waited_after_release, notes
        finally:
            await db.dispose()

    waited_after_release, notes = asyncio.run(run())
    assert notes == ["adopted"]
    assert waited_after_release < 10  # taken at the release, not after the 30 s turn wait ran out


def test_a_read_step_that_would_suspend_fails_clearly(tmp_path: Path) -> None:
    async def suspends(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(0)  # would need an event loop: there is none in the read thread

    async def run() -> None:
        db = Database(f"sqlite+aiosqlite:///{_sqlite_path(tmp_path)}", pool_size=1)
        try:
            with pytest.raises(RuntimeError, match="suspends"):
                await db.read(suspends)
        finally:
            await db.dispose()

    asyncio.run(run())
