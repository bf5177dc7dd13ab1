"""A new customer's first message comes from the intake with what opening the conversation needs (the customer's
aliases and sticky agent, read in the transaction that stored it): its inbox opens and offers the conversation
with no read step of its own. When what the intake read no longer holds by the opening commit (a retried forward of
a message whose conversation opened and closed meanwhile, a customer merged since), that commit opens nothing for
it and the messages go through the step that reads the store.

Ray-free: a real inbox actor in this process on a real store (SQLite and PostgreSQL), agents answering at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from gateway.intake import store_delivery
from meta.simulator import payloads
from meta.webhook_parser import parse_webhook
from store.clock import utcnow
from store.conversation_openings import opening_facts, still_to_open
from store.db import Database
from store.tables import Customer, InboundMessage, Inbox, StickyAgent, Transaction
from tests.test_close_while_delivering import _crash, _forwarded
from tests.test_opening_in_one_commit import (
    _conversations_of,
    _counting,
    _HoldingAgent,
    _live_inbox,
    _new_customer,
    _store,
    _until,
)

BACKENDS = ["sqlite", "postgres"]


def _with_opening(message: InboundMessage, customer_ids: list[int], sticky_agent: int | None) -> dict[str, Any]:
    """The intake's forward of a message it did not attach (`actors.messages.StoredMessage.opening`)."""
    return {**_forwarded(message, None), "opening": {"customer_ids": customer_ids, "sticky_agent": sticky_agent}}


@asynccontextmanager
async def _live(url: str, settings: ActorSettings, let_go: bool = True
                ) -> AsyncIterator[tuple[Database, int, int, _HoldingAgent, InboxActor]]:
    """(the store, organization, inbox, its agent, the inbox's actor activated), the actor crashed at the end."""
    db = Database(url, pool_size=1)
    org_id, inbox_id, agent, inbox = await _live_inbox(db, settings, let_go=let_go)
    try:
        yield db, org_id, inbox_id, agent, inbox
    finally:
        await _crash(inbox)
        await db.dispose()


async def _offered(agent: _HoldingAgent) -> None:
    async def published() -> bool:
        return bool(agent.published)

    await _until(published, "the offer")


async def _merged_customer(db: Database, org_id: int, into: int) -> int:
    """A customer row merged into `into` (as `store.customers` leaves it: no identifiers of its own)."""
    async with db.session() as session:
        merged = Customer(org_id=org_id, name="Dora (before)", merged_into=into)
        session.add(merged)
        await session.flush()
        return merged.id


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_intake_reads_a_customers_aliases_and_sticky_agent_for_every_inbox_at_once(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings) as (db, org_id, inbox_id, agent, _inbox):
            customer_id, _ = await _new_customer(db, org_id, inbox_id)
            merged = await _merged_customer(db, org_id, customer_id)
            async with db.session() as session:
                session.add(StickyAgent(inbox_id=inbox_id, customer_id=customer_id, user_id=agent.user_id,
                                        updated_at=utcnow()))
            async with db.session() as session:
                stranger = Customer(org_id=org_id, wa_id="15550009999", name="Eve")
                session.add(stranger)
                await session.flush()
                facts = await opening_facts(session, {(inbox_id, customer_id), (inbox_id, stranger.id)})
            assert facts == {(inbox_id, customer_id): ([customer_id, merged], agent.user_id),
                             (inbox_id, stranger.id): ([stranger.id], None)}

    asyncio.run(run())


def _text_from(number: str, sender: str) -> Any:
    return parse_webhook(payloads.inbound_message("waba", number, "15550001", sender, "Someone", body="hello"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_intake_forwards_a_new_customers_message_with_its_opening_facts_and_a_follow_up_attached(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A new customer's message carries what opening a conversation needs; a follow-up to the conversation an agent
    holds is attached in the intake's commit and carries none (its inbox opens nothing for it)."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings) as (db, org_id, inbox_id, _, _inbox):
            async with db.session() as session:
                number = await session.scalar(select(Inbox.phone_number_id).where(Inbox.id == inbox_id))
            assert number is not None
            async with db.session() as session:
                new = await store_delivery(session, org_id, _text_from(number, "15550004444"))
            async with db.session() as session:
                held = await store_delivery(session, org_id, _text_from(number, "15550001111"))
            ((first,),) = new.new_messages.values()
            ((follow_up,),) = held.new_messages.values()
            assert first.transaction_id is None
            assert first.opening == {"customer_ids": [first.customer_id], "sticky_agent": None}
            assert follow_up.transaction_id is not None and follow_up.opening is None

    asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_first_message_forwarded_with_its_opening_facts_is_opened_and_offered_with_no_read(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Opened and offered by one commit, no read step; the conversation remembers the sticky agent the intake read;
    a message of a customer merged into this one (an alias) joins the same conversation."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings, let_go=False) as (db, org_id, inbox_id, agent, inbox):
            customer_id, (first, second) = await _new_customer(db, org_id, inbox_id, "hello", "again")
            merged = await _merged_customer(db, org_id, customer_id)
            reads, writes = _counting(inbox, "read"), _counting(inbox, "write")
            sticky = agent.user_id
            assert await inbox.ingest([_with_opening(first, [customer_id, merged], sticky)]) == {
                "attached": 0, "opening": 1}
            await asyncio.wait_for(agent.asked.wait(), 10)
            # Forwarded while the agent is asked to hold the offer, before the conversation's commit: it joins.
            assert await inbox.ingest([_with_opening(second, [customer_id, merged], sticky)]) == {
                "attached": 0, "opening": 1}
            agent.let_go.set()
            await _offered(agent)
            ((tx_id, state, offered_to, kinds, messages),) = await _conversations_of(db, customer_id)
            assert (state, offered_to, kinds) == ("offered", agent.user_id, ["queued", "offered"])
            assert messages == [first.id, second.id]
            assert (reads, writes) == ([], [1])
            assert inbox._txs[tx_id].sticky_agent == sticky

    asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forward_retried_after_its_conversation_closed_opens_no_empty_conversation(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """The gateway sent a first message again (its first forward's answer was lost) after the conversation it opened
    was accepted and closed: the customer has no open conversation, but the message is attached already. No new
    conversation (it would have no message), no offer left held, and the customer's next message opens one."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings) as (db, org_id, inbox_id, agent, inbox):
            user_id = agent.user_id
            customer_id, (first,) = await _new_customer(db, org_id, inbox_id, "hello")
            forward = _with_opening(first, [customer_id], None)
            await inbox.ingest([forward])
            await _offered(agent)
            tx_id = agent.published[0]["transaction_id"]
            assert (await inbox.accept(tx_id, user_id))["status"] == 200
            assert (await inbox.close(tx_id, user_id, False))["status"] == 200
            held_before = len(agent.held)
            await inbox.ingest([forward])  # the retried copy

            async def settled() -> bool:
                return len(inbox._opens) == 0 and inbox._routing_requested is not None \
                    and inbox._routing_requested.done()

            await _until(settled, "the retried forward's pass")
            assert [(t, s, m) for t, s, _, _, m in await _conversations_of(db, customer_id)] == [
                (tx_id, "closed", [first.id])]
            if len(agent.held) > held_before:  # offered before the commit found it stale: withdrawn
                assert agent.calls.count("release") >= 1
            assert len(agent.published) == 1
            async with db.session() as session:
                later = InboundMessage(**{c: getattr(first, c) for c in (
                    "org_id", "waba_id", "inbox_id", "from_wa_id", "customer_id", "customer_name", "type", "raw")},
                    wamid="wamid.later", summary="one more thing", sent_at=utcnow())
                session.add(later)
            await inbox.ingest([_with_opening(later, [customer_id], user_id)])

            async def reopened() -> bool:
                return len(await _conversations_of(db, customer_id)) == 2

            await _until(reopened, "the customer's next conversation")
            assert (await _conversations_of(db, customer_id))[1][4] == [later.id]

    asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_customer_merged_after_the_intake_gets_one_conversation_under_the_survivor(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Between the intake and the inbox, a later delivery merged the message's customer into an older one (the
    message moved with it): the forward's facts are stale. The opening commit opens nothing for the old id; the
    step that reads the store opens the survivor's conversation with the message."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings) as (db, org_id, inbox_id, _, inbox):
            loser, (first,) = await _new_customer(db, org_id, inbox_id, "hello")
            async with db.session() as session:
                survivor = Customer(org_id=org_id, wa_id="15550003333", name="Dora")
                session.add(survivor)
                await session.flush()
                await session.execute(update(Customer).where(Customer.id == loser).values(
                    wa_id=None, merged_into=survivor.id))
                await session.execute(update(InboundMessage).where(InboundMessage.customer_id == loser)
                                      .values(customer_id=survivor.id))
                survivor_id = survivor.id
            await inbox.ingest([_with_opening(first, [loser], None)])

            async def opened() -> bool:
                return bool(await _conversations_of(db, survivor_id))

            await _until(opened, "the survivor's conversation")
            ((tx_id, _, _, _, messages),) = await _conversations_of(db, survivor_id)
            assert messages == [first.id] and await _conversations_of(db, loser) == []
            async with db.session() as session:
                assert await session.scalar(select(Transaction.customer_id).where(Transaction.id == tx_id)) \
                    == survivor_id

    asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_opening_commits_check_says_no_when_anything_the_intake_read_changed(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Each fact the forward carried, changed on its own: a message attached, a customer merged into this one since,
    this customer merged into another. Only the unchanged facts pass."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        async with _live(url, settings) as (db, org_id, inbox_id, _, _inbox):
            customer_id, (first, second) = await _new_customer(db, org_id, inbox_id, "hello", "again")
            merged = await _merged_customer(db, org_id, customer_id)
            ids = [first.id, second.id]

            async def check(customer_ids: list[int], message_ids: list[int]) -> bool:
                return await db.write(lambda connection: still_to_open(connection, inbox_id, customer_ids,
                                                                       message_ids))

            assert await check([customer_id, merged], ids)
            assert not await check([customer_id], ids)  # one merged into it since the intake read
            async with db.session() as session:
                tx = Transaction(org_id=org_id, inbox_id=inbox_id, customer_id=customer_id, state="closed",
                                 waiting_since=utcnow(), created_at=utcnow(), updated_at=utcnow(), tried=[])
                session.add(tx)
                await session.flush()
                await session.execute(update(InboundMessage).where(InboundMessage.id == second.id)
                                      .values(transaction_id=tx.id))
            assert not await check([customer_id, merged], ids)  # a message attached meanwhile
            assert await check([customer_id, merged], [first.id])
            async with db.session() as session:
                survivor = Customer(org_id=org_id, name="Dora (older)")
                session.add(survivor)
                await session.flush()
                await session.execute(update(Customer).where(Customer.id.in_([customer_id, merged]))
                                      .values(merged_into=survivor.id))
            assert not await check([customer_id, merged], [first.id])  # the customer merged into another

    asyncio.run(run())
