"""What a writer of agents' streams tells each agent (`store.agent_streams.LinkedEvent`) is what the agent would read.

An inbox's commit and the intake's append events to agents' streams; each hands the agent the events it appended,
linked to the stream's event before them, so the agent can take them into memory without reading its stream. That
is exact only when what is told equals what a read gives (ids, kinds, payloads, times) and when each link names
the event the stream really has before it: both are checked here on both stores, against the agent's own reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from store.agent_store import open_agent_store
from store.agent_store_steps import LinkedEvent, told_rows
from store.agent_streams import append_to_streams, split_told
from store.db import Database
from store.migrate import upgrade_to_head
from store.routing_repo import append_in_transaction
from store.tables import AgentState
from tests.test_agent_store_actors import _new_agents


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    upgrade_to_head(url)
    yield url


async def _org_with_agents(db: Database, count: int) -> tuple[int, list[int]]:
    """Agents at work: each with its state row, which every writer of its stream locks first on PostgreSQL."""
    org_id, users = await _new_agents(db, count)
    async with db.session() as session:
        session.add_all([AgentState(user_id=user_id, org_id=org_id, status="available", max_concurrent=3)
                         for user_id in users])
    return org_id, users


def test_each_agent_is_told_its_events_as_its_stream_reads_them_each_linked_to_the_one_before(
        store_url: str) -> None:
    at = datetime(2026, 12, 7, 2, 10, 11, 654321, tzinfo=UTC)
    # A tuple and non-ASCII text: told as JSON gives them back.
    message = {"id": 7, "summary": "olá ✓", "pair": (1, 2), "customer": {"name": None}}

    async def run() -> None:
        db = Database(store_url, pool_size=2)
        org_id, (ana, bob) = await _org_with_agents(db, 2)
        reader = open_agent_store(store_url, linger_s=1.0, name="wa-router agent reader")
        told: dict[int, list[LinkedEvent]] = {ana: [], bob: []}
        try:
            # An inbox's commit: two agents' events interleaved, one agent's stream empty before it.
            first = await db.write(lambda connection: append_to_streams(connection, org_id, [
                (ana, "offer", {"offer_id": "1.a", "transaction_id": 1}),
                (bob, "assigned", {"transaction_id": 2, "first_message": message}),
                (ana, "message", {"transaction_id": 3, "message": message}),
            ], at))
            # The intake's commit (async, with each event's own organization) after it.
            async with db.session() as session:
                second = await append_in_transaction(session, [
                    (org_id, (bob, "message", {"transaction_id": 2, "message": message})),
                    (org_id, (ana, "transaction_closed", {"transaction_id": 3, "reason": "closed"})),
                ])
            for commit in (first, second):
                assert set(commit) == {ana, bob}
                for user_id, events in commit.items():
                    told[user_id] += events
            for user_id in (ana, bob):
                stream = await reader.events_after(user_id, 0, 100)
                # Linked: each names the stream's event before it (0 before the first).
                assert [(before, event_id) for before, event_id, *_ in told[user_id]] == \
                    list(zip([0] + [e.id for e in stream[:-1]], [e.id for e in stream], strict=True))
                assert [(kind, payload, datetime.fromisoformat(stamp)) for _, _, kind, payload, stamp in
                        told[user_id]] == [(e.kind, e.payload, e.created_at) for e in stream]
            assert told[ana][1][3]["message"]["pair"] == [1, 2]
        finally:
            await reader.close()
            await db.engine.dispose()

    asyncio.run(run())


def test_one_append_for_several_deliveries_tells_each_delivery_its_own_events_in_stream_order(
        store_url: str) -> None:
    """A group of webhook deliveries appends all its events at once; each delivery's answer carries its own."""
    def shown(user_id: int, message_id: int) -> tuple[int, str, dict[str, Any]]:
        return (user_id, "message", {"transaction_id": message_id, "message": {"id": message_id}})

    async def run() -> tuple[list[dict[int, list[LinkedEvent]]], list[list[tuple[int, str, dict[str, Any]]]],
                             int, int]:
        db = Database(store_url, pool_size=2)
        org_id, (ana, bob) = await _org_with_agents(db, 2)
        try:
            parts = [[shown(ana, 1)], [shown(bob, 2), shown(ana, 3)], [], [shown(ana, 4)]]
            async with db.session() as session:
                told = await append_in_transaction(session, [(org_id, event) for part in parts for event in part])
            return split_told(told, parts), parts, ana, bob
        finally:
            await db.engine.dispose()

    split, parts, ana, bob = asyncio.run(run())
    assert [{user_id: [(user_id, kind, payload) for _, _, kind, payload, _ in events]
             for user_id, events in part.items()} for part in split] == \
        [{user_id: [event for event in part if event[0] == user_id] for user_id, _, _ in part} for part in parts]
    # Ana's three events, each delivery's linked to the one before it on her stream.
    ana_events = [event for part in split for event in part.get(ana, [])]
    assert [before for before, *_ in ana_events[1:]] == [event_id for _, event_id, *_ in ana_events[:-1]]
    assert len(split[1][bob]) == 1


def test_an_agent_takes_told_events_only_where_they_follow_what_it_knows() -> None:
    """Told events are taken when their links meet the newest event known; ones known already are skipped (a
    retried tell); a gap (a tell before them still on its way, or lost) means the stream must be read instead."""
    def linked(before: int, event_id: int) -> LinkedEvent:
        return (before, event_id, "message", {"transaction_id": 1, "message": {"id": event_id}},
                "2026-12-07T02:10:11.654321+00:00")

    told = [linked(12, 15), linked(10, 12)]  # told out of order: taken in the stream's
    rows = told_rows(told, 10)
    assert rows is not None and [row.id for row in rows] == [12, 15]
    assert rows[0].created_at == datetime(2026, 12, 7, 2, 10, 11, 654321, tzinfo=UTC)
    assert told_rows(told, 12) == told_rows([linked(12, 15)], 12) and len(told_rows(told, 12) or []) == 1
    assert told_rows(told, 15) == []  # all known: nothing to take, nothing to read
    assert told_rows(told, 9) is None  # event 10 is missing from what the agent knows
    assert told_rows([linked(12, 15)], 10) is None  # event 12 is missing
    assert told_rows([linked(0, 3)], 0) is not None and told_rows([linked(2, 3)], 0) is None
