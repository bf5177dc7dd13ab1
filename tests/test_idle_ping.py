"""On PostgreSQL a pooled connection is pinged before use only when it sat idle (`store.idle_ping`): a step right
after another costs no ping (three round trips each), and a connection that died while idle is replaced before any
step meets it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from store import idle_ping
from store.db import Database


async def _backend_and_queries(db: Database) -> tuple[int, list[str]]:
    """(The backend of the connection the pool hands out, a list every query sent on it is appended to.)"""
    queries: list[str] = []
    async with db.engine.connect() as connection:
        raw: Any = (await connection.get_raw_connection()).driver_connection
        raw.add_query_logger(lambda record: queries.append(record.query))
        pid = int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    return pid, queries


async def _step(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(url: str, pid: int) -> None:
    other = Database(url, pool_size=1)
    async with other.session() as session:
        assert (await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})).scalar_one()
    await other.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(postgres_url: str) -> None:
    async def run() -> None:
        db = Database(postgres_url, pool_size=2)
        pid, queries = await _backend_and_queries(db)
        before = len(queries)
        for _ in range(5):
            assert await _step(db) == pid  # the same warm connection, last in first out
        sent = queries[before:]
        assert sent.count("BEGIN;") == 5 and ";" not in sent  # five steps, no ping
        await db.dispose()

    asyncio.run(run())


def test_a_connection_idle_past_the_limit_is_pinged_and_replaced_if_it_died(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idle_ping, "PING_AFTER_IDLE_S", 0.2)

    async def run() -> None:
        db = Database(postgres_url, pool_size=2)
        pid, queries = await _backend_and_queries(db)
        await asyncio.sleep(0.3)
        before = len(queries)
        assert await _step(db) == pid
        assert ";" in queries[before:]  # idle past the limit: pinged, alive, used
        await _terminate(postgres_url, pid)
        await asyncio.sleep(0.3)
        replacement = await _step(db)  # the ping finds it dead: the step runs on a new connection
        assert replacement != pid
        await db.dispose()

    asyncio.run(run())


def test_a_connection_that_died_within_the_limit_fails_one_step_and_the_pool_recovers(postgres_url: str) -> None:
    """What the pings no longer cover: the step meets the dead connection and fails as the store unavailable, as a
    step whose connection dies mid-way always could; the pool drops its connections and the next step succeeds."""
    async def run() -> None:
        db = Database(postgres_url, pool_size=2)
        pid, _ = await _backend_and_queries(db)
        await _terminate(postgres_url, pid)
        with pytest.raises(DBAPIError) as failed:
            await _step(db)
        assert failed.value.connection_invalidated
        assert await _step(db) != pid
        await db.dispose()

    asyncio.run(run())
