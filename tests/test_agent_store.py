"""An agent actor's store (`store.agent_store`): plain SQL on the drivers, read and written as the ORM does.

Agents write their rows without SQLAlchemy while the gateway and the inboxes read them through it, so
every value must round-trip both ways on both backends. On PostgreSQL an agent keeps one connection
between steps, named after it, and none once idle (a store actor serving many agents keeps at most its
own number); on SQLite it takes the writers' turn like every writer.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from store.agent_store import open_agent_store
from store.agent_store_steps import AgentStore
from store.db import Database
from store.errors import StoreUnavailable
from store.migrate import upgrade_to_head
from store.sqlite_file import WriterTurn, lock_path_of
from store.tables import AgentEvent, AgentState, Organization, User


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_to_head(url)
    yield url


async def _new_agent(db: Database) -> tuple[int, int]:
    async with db.session() as session:
        org = Organization(name="Acme", webhook_verify_token=uuid.uuid4().hex, missed_offers_before_away=4)
        session.add(org)
        await session.flush()
        user = User(org_id=org.id, name="Ana", email=f"{uuid.uuid4().hex}@acme.test", role="member")
        session.add(user)
        await session.flush()
        return org.id, user.id


def _open(url: str, user_id: int, linger_s: float = 5.0) -> AgentStore:
    return open_agent_store(url, linger_s=linger_s, name=f"wa-router agent {user_id}")


def test_what_an_agent_writes_reads_the_same_through_the_orm_and_back(store_url: str) -> None:
    at = datetime(2026, 11, 26, 13, 45, 7, 123456, tzinfo=UTC)
    since = at - timedelta(minutes=3)
    payload = {"text": "olá — ✓ \"quoted\"", "n": [1, 2.5, None], "nested": {"ok": True}}

    async def run() -> None:
        db = Database(store_url, pool_size=1)
        org_id, user_id = await _new_agent(db)
        store = _open(store_url, user_id)
        try:
            first = await store.load(org_id, user_id, recent=10, work_kinds=("assigned",), work_history=10)
            assert first is not None and first.state.status == "offline" and first.state.epoch == 1
            assert (first.active, first.offers, first.recent) == ({}, [], [])
            ids = await store.commit(org_id, user_id, {"status": "available", "available_since": since,
                                                       "last_chat_end_at": at, "missed_in_a_row": 2},
                                     [("status", {"status": "available"}), ("message", payload)], at)
            assert len(ids) == 2 and ids[0] < ids[1]
            async with db.session() as session:
                row = await session.get(AgentState, user_id)
                events = (await session.scalars(select(AgentEvent).where(AgentEvent.user_id == user_id)
                                                .order_by(AgentEvent.id))).all()
                assert row is not None
                assert (row.status, row.available_since, row.last_chat_end_at, row.missed_in_a_row, row.epoch) == (
                    "available", since, at, 2, 1)
                assert [(e.id, e.kind, e.payload, e.created_at) for e in events] == [
                    (ids[0], "status", {"status": "available"}, at), (ids[1], "message", payload, at)]
                # And the other way: a row the ORM wrote reads the same through the agent's store.
                later = at + timedelta(seconds=1)
                session.add(AgentEvent(org_id=org_id, user_id=user_id, kind="assigned",
                                       payload={"transaction_id": 7}, created_at=later))
            again = await store.load(org_id, user_id, recent=10, work_kinds=("assigned",), work_history=10)
            assert again is not None and again.state.epoch == 2  # each activation takes a new epoch
            assert (again.state.available_since, again.state.last_chat_end_at) == (since, at)
            assert [(e.kind, e.payload, e.created_at) for e in again.recent] == [
                ("assigned", {"transaction_id": 7}, later), ("message", payload, at),
                ("status", {"status": "available"}, at)]
            assert [e.kind for e in again.work_events] == ["assigned"]
            after = await store.events_after(user_id, ids[0], 10)
            assert [e.id for e in after][:1] == [ids[1]] and len(after) == 2
            assert await store.last_event_id(user_id) == after[-1].id
            assert await store.missed_offers_before_away(org_id) == 4
            assert await store.served_inboxes(user_id) == {}
        finally:
            await store.close()
            await db.dispose()

    asyncio.run(run())


def test_a_user_of_another_organization_or_none_loads_nothing_and_a_step_sets_only_its_columns(
        store_url: str) -> None:
    async def run() -> None:
        db = Database(store_url, pool_size=1)
        org_id, user_id = await _new_agent(db)
        store = _open(store_url, user_id)
        try:
            assert await store.load(org_id + 1000, user_id, recent=1, work_kinds=(), work_history=1) is None
            assert await store.load(org_id, user_id + 1000, recent=1, work_kinds=(), work_history=1) is None
            with pytest.raises(ValueError, match="epoch"):
                await store.commit(org_id, user_id, {"epoch": 9}, [], datetime.now(UTC))
        finally:
            await store.close()
            await db.dispose()

    asyncio.run(run())


def test_an_agents_sqlite_write_waits_for_the_writers_turn(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id = await _new_agent(db)
        store = _open(url, user_id)
        held = WriterTurn(lock_path_of(f"{tmp_path}/store.db"), wait_s=5)
        held.take()  # another process's writer, mid-transaction
        try:
            step = asyncio.ensure_future(store.commit(org_id, user_id, None, [("note", {})], datetime.now(UTC)))
            await asyncio.sleep(0.3)
            assert not step.done()
            threading.Timer(0.05, held.release).start()
            assert len(await asyncio.wait_for(step, 5)) == 1
        finally:
            held.release()
            await store.close()
            await db.dispose()

    asyncio.run(run())


async def _connections_named(watcher: Database, name: str) -> int:
    async with watcher.session() as session:
        return int((await session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"), {"name": name})).scalar_one())


async def _eventually_named(watcher: Database, name: str, count: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await _connections_named(watcher, name) == count:
            return True
        await asyncio.sleep(0.05)
    return False


@asynccontextmanager
async def _postgres_agent(url: str, linger_s: float) -> AsyncIterator[tuple[Database, int, int, str, AgentStore]]:
    """A new agent's store on PostgreSQL, and a watcher to look at the server with: (watcher, org, user,
    the agent's application_name, store). The database is migrated (`upgrade_to_head`) beforehand."""
    watcher = Database(url, pool_size=2)
    org_id, user_id = await _new_agent(watcher)
    store = _open(url, user_id, linger_s=linger_s)
    try:
        yield watcher, org_id, user_id, f"wa-router agent {user_id}", store
    finally:
        await store.close()
        await watcher.dispose()


def test_on_postgres_an_agent_keeps_one_named_connection_then_none_once_idle(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)

    async def run() -> None:
        # A linger long enough for a busy machine between two steps; its end is waited for, not timed.
        async with _postgres_agent(postgres_url, linger_s=3.0) as (watcher, org_id, user_id, name, store):
            await store.load(org_id, user_id, recent=1, work_kinds=(), work_history=1)
            await store.commit(org_id, user_id, {"status": "away"}, [], datetime.now(UTC))
            assert await _connections_named(watcher, name) == 1  # the second step reused the first's
            assert await _eventually_named(watcher, name, 0, within_s=30)  # idle past the linger: given back
            # A kept connection whose backend died while idle: the next step opens another and succeeds.
            await store.served_inboxes(user_id)
            async with watcher.session() as session:
                await session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                           "WHERE application_name = :name"), {"name": name})
            assert await store.missed_offers_before_away(org_id) == 4

    asyncio.run(run())


def test_on_postgres_overlapping_steps_open_a_second_connection_and_only_one_lingers(postgres_url: str) -> None:
    """With 51 busy agents, two connections lingering each filled PostgreSQL's default 100."""
    upgrade_to_head(postgres_url)

    async def run() -> None:
        async with _postgres_agent(postgres_url, linger_s=30) as (watcher, org_id, user_id, name, store):
            await store.load(org_id, user_id, recent=1, work_kinds=(), work_history=1)
            async with watcher.session() as blocker:  # holds the agent's row: both steps wait on it, together
                await blocker.execute(text("SELECT 1 FROM agent_states WHERE user_id = :u FOR UPDATE"), {"u": user_id})
                steps = [asyncio.ensure_future(store.commit(org_id, user_id, {"missed_in_a_row": n}, [],
                                                            datetime.now(UTC))) for n in (1, 2)]
                assert await _eventually_named(watcher, name, 2)
            await asyncio.gather(*steps)
            await asyncio.sleep(0.3)  # the second connection's goodbye
            assert await _connections_named(watcher, name) == 1

    asyncio.run(run())


def test_on_postgres_a_server_that_cannot_be_reached_is_store_unavailable() -> None:
    async def run() -> None:
        store = open_agent_store("postgresql+asyncpg://postgres@127.0.0.1:9/none", linger_s=1, name="x")
        try:
            with pytest.raises(StoreUnavailable):
                await store.served_inboxes(1)
        finally:
            await store.close()

    asyncio.run(run())


def test_an_in_memory_or_unknown_database_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        open_agent_store("sqlite+aiosqlite:///:memory:", linger_s=1, name="x")
    with pytest.raises(ValueError, match="SQLite and PostgreSQL"):
        open_agent_store("mysql://x/y", linger_s=1, name="x")


def test_a_shared_store_runs_many_agents_steps_on_at_most_its_connections_then_gives_them_back(
        postgres_url: str) -> None:
    """How a store actor (`actors/agent_store_actor.py`) holds the connections of all the agents it serves."""
    upgrade_to_head(postgres_url)
    name = f"wa-router agent-store test-{uuid.uuid4().hex[:6]}"

    async def run() -> None:
        watcher = Database(postgres_url, pool_size=2)
        store = open_agent_store(postgres_url, linger_s=0.5, name=name, connections=3, keep=3)
        try:
            agents = [await _new_agent(watcher) for _ in range(12)]
            peak = 0
            sampling = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not sampling.is_set():
                    peak = max(peak, await _connections_named(watcher, name))
                    await asyncio.sleep(0.01)

            sampler = asyncio.ensure_future(sample())
            # Twelve agents at once, each loading then committing an event: more steps than connections.
            loaded = await asyncio.gather(*(store.load(org_id, user_id, recent=5, work_kinds=(), work_history=5)
                                            for org_id, user_id in agents))
            assert all(agent is not None for agent in loaded)
            ids = await asyncio.gather(*(store.commit(org_id, user_id, {"status": "available"},
                                                      [("status", {"status": "available"})], datetime.now(UTC))
                                         for org_id, user_id in agents))
            sampling.set()
            await sampler
            assert len({i for step_ids in ids for i in step_ids}) == len(agents)
            assert 1 <= peak <= 3
            assert 1 <= await _connections_named(watcher, name) <= 3  # kept for the next steps...
            assert await _eventually_named(watcher, name, 0)  # ...and given back once unused for the linger
            # Only this module's steps run: a store actor runs nothing else it is sent.
            with pytest.raises(ValueError, match="not an agent store step"):
                await store.run(_not_a_step)
        finally:
            await store.close()
            await watcher.dispose()

    asyncio.run(run())


async def _not_a_step(tx: object) -> None:
    return None


def test_a_commit_reads_back_what_the_gateway_appended_to_the_stream_since_in_id_order(store_url: str) -> None:
    """Follow-ups are appended to an agent's stream by the gateway's intake commit: the agent's next commit
    returns them with its own events, in id order, so its memory of the stream has no gap."""
    at = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)

    async def run() -> None:
        from store.agent_streams import message_shown
        from store.routing_repo import append_in_transaction

        db = Database(store_url, pool_size=1)
        org_id, user_id = await _new_agent(db)
        store = _open(store_url, user_id)
        try:
            await store.load(org_id, user_id, recent=10, work_kinds=("assigned",), work_history=10)
            (first,) = await store.commit(org_id, user_id, None, [("offer", {"offer_id": "1.0"})], at)
            async with db.session() as session:
                await append_in_transaction(session, [
                    (org_id, message_shown(user_id, 7, {"id": 11, "inbox_id": 3, "summary": "a"})),
                    (org_id, message_shown(user_id, 7, {"id": 12, "inbox_id": 3, "summary": "b"}))])
            rows = await store.commit_and_read(org_id, user_id, {"status": "available"},
                                               [("status", {"status": "available"})], at, after_id=first)
            assert [(r.kind, r.payload.get("message", {}).get("summary")) for r in rows] == [
                ("message", "a"), ("message", "b"), ("status", None)]
            assert [r.id for r in rows] == sorted(r.id for r in rows) and rows[0].id > first
            assert rows[0].payload == {"transaction_id": 7, "inbox_id": 3,
                                       "message": {"id": 11, "inbox_id": 3, "summary": "a"}}
            assert await store.commit_and_read(org_id, user_id, None, [], at, after_id=rows[-1].id) == []
        finally:
            await store.close()
            await db.dispose()

    asyncio.run(run())
