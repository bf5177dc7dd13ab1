"""SQLite writers take turns through a lock file (store/sqlite_writers.py): blocked, woken, never stuck."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import text

from store.db import Database
from store.sqlite_file import WriterTurn, turns_taken


def _authorize_in_thread(turn: WriterTurn) -> tuple[threading.Thread, list[float]]:
    granted_at: list[float] = []

    def run() -> None:
        turn.authorize(sqlite3.SQLITE_INSERT)
        granted_at.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, granted_at


def test_a_second_writer_waits_for_the_first_and_is_woken_at_its_release(tmp_path: Path) -> None:
    lock = str(tmp_path / "db.writers")
    first, second = WriterTurn(lock, wait_s=30), WriterTurn(lock, wait_s=30)
    first.authorize(sqlite3.SQLITE_UPDATE)
    assert first.held
    first.authorize(sqlite3.SQLITE_INSERT)  # a later write of the same transaction: already its turn
    thread, granted_at = _authorize_in_thread(second)
    time.sleep(0.3)
    assert not granted_at and not second.held
    released_at = time.monotonic()
    first.release()
    thread.join(5)
    assert second.held
    # Woken at the release, not when its 30 s wait ran out (how fast is the bench's to measure, not a test's).
    assert granted_at[0] - released_at < 10
    second.release()


def test_reads_take_no_turn(tmp_path: Path) -> None:
    turn = WriterTurn(str(tmp_path / "db.writers"), wait_s=30)
    for action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_PRAGMA):
        assert turn.authorize(action) == sqlite3.SQLITE_OK
    assert not turn.held


def test_a_turn_not_granted_in_time_is_given_up_and_passes_on_when_it_comes(tmp_path: Path) -> None:
    lock = str(tmp_path / "db.writers")
    holder, impatient, later = (WriterTurn(lock, wait_s=w) for w in (30, 0.2, 30))
    holder.authorize(sqlite3.SQLITE_UPDATE)
    started = time.monotonic()
    assert impatient.authorize(sqlite3.SQLITE_INSERT) == sqlite3.SQLITE_OK  # goes on, under SQLite's own lock
    # Gave up after its own 0.2 s, not after the holder's release (which never came meanwhile).
    assert 0.15 < time.monotonic() - started < 10 and not impatient.held
    holder.release()
    # The given-up waiter gets the lock once free and lets it go at once: nobody is left stuck behind it.
    thread, granted_at = _authorize_in_thread(later)
    thread.join(5)
    assert later.held and granted_at
    later.release()


def test_two_stores_on_one_file_write_one_after_the_other_and_readers_are_not_held(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def run() -> list[str]:
        first, second, reader = (Database(url, pool_size=1) for _ in range(3))
        order: list[str] = []
        try:
            async with first.session() as session:
                await session.execute(text("CREATE TABLE notes (body TEXT)"))
            first_holds = asyncio.Event()

            async def write_slowly() -> None:
                async with first.session() as session:
                    await session.execute(text("INSERT INTO notes VALUES ('first')"))
                    first_holds.set()
                    await asyncio.sleep(0.5)  # the turn is held until this commit
                    order.append("first commits")

            async def write_after() -> None:
                await first_holds.wait()
                async with second.session() as session:
                    await session.execute(text("INSERT INTO notes VALUES ('second')"))
                    order.append("second wrote")

            async def read_meanwhile() -> None:
                await first_holds.wait()
                async with reader.session() as session:
                    await session.execute(text("SELECT count(*) FROM notes"))
                    order.append("read")

            await asyncio.gather(write_slowly(), write_after(), read_meanwhile())
            async with reader.session() as session:
                bodies = (await session.execute(text("SELECT body FROM notes ORDER BY rowid"))).scalars().all()
            assert bodies == ["first", "second"]
            return order
        finally:
            for db in (first, second, reader):
                await db.dispose()

    order = asyncio.run(run())
    assert order == ["read", "first commits", "second wrote"]


def test_waiting_for_turns_reuses_a_few_threads_instead_of_starting_one_per_wait(tmp_path: Path) -> None:
    lock = str(tmp_path / "db.writers")
    holder = WriterTurn(lock, wait_s=30)

    def waiters() -> set[int]:
        return {t.ident or 0 for t in threading.enumerate() if t.name == "sqlite-writer-turn"}

    for _ in range(20):
        holder.take()
        waiting = WriterTurn(lock, wait_s=30)
        thread, granted_at = _authorize_in_thread(waiting)
        time.sleep(0.01)
        holder.release()
        thread.join(5)
        assert granted_at and waiting.held  # woken at the release, every time
        waiting.release()
    # Twenty waits, each in a thread kept from the previous ones (a few at most), none started per wait.
    assert 1 <= len(waiters()) <= 4


def test_the_turns_taken_are_counted_across_writers_for_the_benchmark(tmp_path: Path) -> None:
    """The store's commits on SQLite: each write transaction takes one turn, and the lock file counts them."""
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    database_path = str(tmp_path / "store.db")

    async def run() -> None:
        db = Database(url, pool_size=1)
        try:
            async with db.session() as session:
                await session.execute(text("CREATE TABLE notes (n INTEGER)"))
            before = turns_taken(database_path)
            for n in range(3):
                await db.write(lambda connection, n=n: connection.execute(text(f"INSERT INTO notes VALUES ({n})")))
            async with db.session() as session:  # a read takes no turn
                await session.execute(text("SELECT count(*) FROM notes"))
            assert turns_taken(database_path) - before == 3
        finally:
            await db.dispose()

    asyncio.run(run())
    assert turns_taken(str(tmp_path / "none.db")) == 0
