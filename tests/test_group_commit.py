"""Webhook deliveries arriving together share one store transaction (gateway/group_commit.py), on a real store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.group_commit import DeliveryGroupCommit
from gateway.intake import Delivery, IntakeResult, store_deliveries
from meta.simulator import payloads
from meta.webhook_parser import parse_webhook
from store.agent_streams import LOCK_STREAMS
from store.db import Database
from store.migrate import upgrade_to_head
from store.tables import AgentState, Customer, InboundMessage, Inbox, Organization, Transaction
from store.types import utcnow
from tests.test_close_while_delivering import _conversation

WABA = "waba-group-commit"


def _delivery(wamid: str, sender: str) -> Any:
    return parse_webhook({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001", "phone_number_id": "pn-unused"},
            "contacts": [{"wa_id": sender, "profile": {"name": "Ana"}}],
            "messages": [{"from": sender, "id": wamid, "timestamp": "1760000000", "type": "text",
                          "text": {"body": "hello"}}],
        }}]}]})


class CountingDatabase(Database):
    """The real store, counting its write transactions."""

    transactions = 0

    async def write_session(self, step: Any) -> Any:
        self.transactions += 1
        return await super().write_session(step)


@pytest.fixture()
def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    return url


async def _org(db: Database) -> int:
    async with db.session() as session:
        org = Organization(name="group commit", webhook_verify_token="t")
        session.add(org)
        await session.flush()
        return int(org.id)


async def _stored_wamids(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.scalars(select(InboundMessage.wamid).order_by(InboundMessage.wamid))).all())


def test_deliveries_arriving_together_share_transactions_and_each_gets_its_own_answer(database_url: str) -> None:
    async def run() -> tuple[list[IntakeResult], list[str], int, int]:
        db = CountingDatabase(database_url, pool_size=2)
        try:
            org_id = await _org(db)
            intake = DeliveryGroupCommit(db)
            # 30 deliveries at once; the last two repeat wamid.0 (Meta redelivering) in the same groups.
            wamids = [f"wamid.{i}" for i in range(28)] + ["wamid.0", "wamid.0"]
            results = await asyncio.gather(*(intake.store(org_id, _delivery(w, f"49150{i:05d}"), {WABA: {org_id}})
                                             for i, w in enumerate(wamids)))
            async with db.session() as session:
                rows = await session.scalar(select(func.count()).select_from(InboundMessage))
            return list(results), await _stored_wamids(db), db.transactions, int(rows or 0)
        finally:
            await db.dispose()

    results, stored, transactions, rows = asyncio.run(run())
    assert [r.new_message_count for r in results] == [1] * 28 + [0, 0]
    assert [r.duplicate_messages for r in results] == [0] * 28 + [1, 1]
    assert stored == sorted(f"wamid.{i}" for i in range(28)) and rows == 28
    assert transactions < 30 // 2  # grouped: the first delivery alone, the rest together


def test_a_delivery_that_cannot_be_stored_fails_alone_and_its_group_is_still_stored(database_url: str) -> None:
    async def run() -> tuple[list[Any], list[str]]:
        db = Database(database_url, pool_size=2)
        try:
            org_id = await _org(db)
            intake = DeliveryGroupCommit(db)
            missing_org = org_id + 1000  # no such organization: its rows break a foreign key
            plan = [(org_id, "wamid.a"), (missing_org, "wamid.b"), (org_id, "wamid.c"), (org_id, "wamid.d")]
            results = await asyncio.gather(*(intake.store(org, _delivery(w, "4915000001"), {WABA: {org}})
                                             for org, w in plan), return_exceptions=True)
            return list(results), await _stored_wamids(db)
        finally:
            await db.dispose()

    results, stored = asyncio.run(run())
    assert isinstance(results[1], Exception) and "FOREIGN KEY" in str(results[1])
    assert [r.new_message_count for i, r in enumerate(results) if i != 1] == [1, 1, 1]
    assert stored == ["wamid.a", "wamid.c", "wamid.d"]


def test_on_sqlite_a_delivery_the_writer_cannot_take_within_the_pool_timeout_is_refused_and_not_stored(
        database_url: str, tmp_path: Path) -> None:
    """Another process holds SQLite's write lock: the writer's first group waits for it, and a delivery left waiting
    for the next group longer than the pool timeout is refused as busy (the gateway answers 503; Meta redelivers)."""
    async def run() -> tuple[Any, IntakeResult, list[str]]:
        db = Database(database_url, pool_size=2, pool_timeout_s=0.5)
        try:
            org_id = await _org(db)
            intake = DeliveryGroupCommit(db)
            other_process = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
            other_process.execute("BEGIN IMMEDIATE")
            first = asyncio.ensure_future(intake.store(org_id, _delivery("wamid.first", "4915000001"),
                                                       {WABA: {org_id}}))
            await asyncio.sleep(0.2)  # the writer has taken it and waits for the lock
            # Bounded here too: without the refusal the delivery would wait for the lock this test holds.
            refused = await asyncio.gather(asyncio.wait_for(intake.store(
                org_id, _delivery("wamid.second", "4915000002"), {WABA: {org_id}}), 10), return_exceptions=True)
            other_process.rollback()
            other_process.close()
            return refused[0], await asyncio.wait_for(first, 30), await _stored_wamids(db)
        finally:
            await db.dispose()

    refused, first, stored = asyncio.run(run())
    assert isinstance(refused, PoolTimeout)
    assert first.new_message_count == 1 and stored == ["wamid.first"]


def test_with_postgresql_deliveries_arriving_together_share_transactions_written_side_by_side(
        postgres_url: str) -> None:
    upgrade_to_head(postgres_url)

    async def run() -> tuple[list[IntakeResult], int, list[str]]:
        db = CountingDatabase(postgres_url, pool_size=4)
        try:
            org_id = await _org(db)
            intake = DeliveryGroupCommit(db)
            wamids = [f"wamid.pg.{org_id}.{i}" for i in range(30)] + [f"wamid.pg.{org_id}.0"]
            results = await asyncio.gather(*(intake.store(org_id, _delivery(w, f"49160{i:05d}"), {WABA: {org_id}})
                                             for i, w in enumerate(wamids)))
            async with db.session() as session:
                stored = list((await session.scalars(select(InboundMessage.wamid).where(
                    InboundMessage.org_id == org_id))).all())
            return list(results), db.transactions, stored
        finally:
            await db.dispose()

    results, transactions, stored = asyncio.run(run())
    assert [r.new_message_count for r in results] == [1] * 30 + [0]
    assert results[-1].duplicate_messages == 1 and len(stored) == 30
    # Every delivery starts a writer, and the first writer to run takes all those waiting: one group.
    assert transactions < 31 // 2


async def _follow_ups_to_one_agents_two_conversations(db: Database) -> tuple[int, int, list[int], list[Delivery]]:
    """(org, agent, [conversation of 15550001111, of 15550002222], a follow-up delivery to each): both conversations
    held by the agent."""
    org_id, user_id, inbox_id, _, first = await _conversation(db)
    now = utcnow()
    async with db.session() as session:
        customer = Customer(org_id=org_id, wa_id="15550002222", name="Dora")
        session.add_all([customer, AgentState(user_id=user_id, org_id=org_id, status="available")])
        await session.flush()
        second = Transaction(org_id=org_id, inbox_id=inbox_id, customer_id=customer.id,
                             customer_wa_id="15550002222", state="assigned", agent_id=user_id, assigned_at=now,
                             waiting_since=now, created_at=now, updated_at=now, tried=[])
        session.add(second)
        await session.flush()
        number = str(await session.scalar(select(Inbox.phone_number_id).where(Inbox.id == inbox_id)))
        conversations = [first, second.id]
    deliveries: list[Delivery] = [
        (org_id, parse_webhook(payloads.inbound_message("waba", number, "15550001", sender, name,
                                                       body="still there?")), None)
        for sender, name in (("15550001111", "Carla"), ("15550002222", "Dora"))]
    return org_id, user_id, conversations, deliveries


@dataclass
class _CloseUnderWay:
    db: Database
    closing: AsyncConnection  # the close's connection, its transaction open
    org_id: int
    agent_id: int
    held: int  # the conversation the agent keeps
    deliveries: list[Delivery]  # a follow-up to each conversation, the kept one first


@contextlib.asynccontextmanager
async def _close_under_way(url: str) -> AsyncIterator[_CloseUnderWay]:
    """An agent holding two conversations, a follow-up to each to be stored, and a close of the second under way:
    its row written, not yet committed (the caller commits it or not)."""
    db = Database(url, pool_size=2)
    try:
        org_id, agent_id, (held, closed), deliveries = await _follow_ups_to_one_agents_two_conversations(db)
        async with db.engine.connect() as closing:
            await closing.execute(text("UPDATE transactions SET state = 'closed' WHERE id = :tx"), {"tx": closed})
            yield _CloseUnderWay(db, closing, org_id, agent_id, held, deliveries)
    finally:
        await db.dispose()


def test_a_group_on_postgresql_locks_agents_streams_last_so_a_close_under_way_is_not_deadlocked(
        postgres_url: str) -> None:
    """Two follow-ups to one agent's two conversations, stored together while a close of the second holds its row
    and then locks the agent's stream, as an inbox's commit does: the group waits for the close and goes on; had it
    locked the stream with the first follow-up, each would wait for the other."""
    upgrade_to_head(postgres_url)

    async def run() -> None:
        async with _close_under_way(postgres_url) as scene:

            async def store_together() -> list[IntakeResult]:
                async with scene.db.session() as session:
                    return await store_deliveries(session, scene.deliveries)

            group = asyncio.ensure_future(store_together())
            await asyncio.sleep(1.0)
            assert not group.done()  # the second follow-up waits for the close
            # The close's commit locks the agent's stream after its conversation's row, as every writer does.
            await asyncio.wait_for(scene.closing.execute(LOCK_STREAMS, {"agents": [scene.agent_id]}), 5)
            await scene.closing.commit()
            first_result, second_result = await asyncio.wait_for(group, 30)
        # The first joins the conversation the agent holds; the second opens the customer's next one.
        assert first_result.new_messages == {} and first_result.agents_shown == {(scene.org_id, scene.agent_id)}
        assert [(event[2], event[3]["transaction_id"]) for event in first_result.told[scene.agent_id]] == \
            [("message", scene.held)]
        ((opening,),) = second_result.new_messages.values()
        assert opening.transaction_id is None and opening.opening is not None

    asyncio.run(run())


def test_a_group_on_postgresql_gives_way_to_a_commit_holding_a_conversation_past_its_lock_timeout(
        postgres_url: str) -> None:
    """A group waits for another writer's row at most `lock_timeout_ms` once it holds its customers' locks, then fails
    (its deliveries are stored one by one): a cycle through a group is always broken on the group's side."""
    upgrade_to_head(postgres_url)

    async def run() -> str:
        async with _close_under_way(postgres_url) as scene:
            # The close is never committed while the group waits: only the group's own timeout ends the wait.
            with pytest.raises(DBAPIError) as refused:
                async with scene.db.session() as session:
                    await store_deliveries(session, scene.deliveries, lock_timeout_ms=300)
            await scene.closing.rollback()
            async with scene.db.session() as session:
                stored = await session.scalar(select(func.count()).select_from(InboundMessage).where(
                    InboundMessage.org_id == scene.org_id))
            assert stored == 1  # the conversation's first message only: the group left nothing behind
            return str(getattr(refused.value.orig, "sqlstate", ""))

    assert asyncio.run(run()) == "55P03"  # lock_not_available: the group's own timeout, not a deadlock
