"""Webhook deliveries arriving together share one store transaction (gateway/group_commit.py), on a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.group_commit import DeliveryGroupCommit
from gateway.intake import IntakeResult
from meta.webhook_parser import parse_webhook
from store.db import Database
from store.migrate import upgrade_to_head
from store.tables import InboundMessage, Organization

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


def test_with_postgresql_each_delivery_is_its_own_transaction_side_by_side(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)

    async def run() -> tuple[list[IntakeResult], int]:
        db = CountingDatabase(postgres_url, pool_size=4)
        try:
            org_id = await _org(db)
            intake = DeliveryGroupCommit(db)
            results = await asyncio.gather(*(intake.store(org_id, _delivery(f"wamid.pg.{org_id}.{i}", f"49160{i:05d}"),
                                                          {WABA: {org_id}}) for i in range(10)))
            return list(results), db.transactions
        finally:
            await db.dispose()

    results, transactions = asyncio.run(run())
    assert [r.new_message_count for r in results] == [1] * 10
    assert transactions == 10  # no group: PostgreSQL runs them side by side
