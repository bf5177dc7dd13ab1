"""A new customer's conversation is opened and offered by one commit of its inbox: the routing pass that plans the
offer opens the conversation with it (`actors.pending_opens`).

Ray-free: a real inbox actor in this process on a real store (SQLite and PostgreSQL), with an agent whose holds
wait until the test lets them go, so a message can come, or the inbox's process can die, while an offer is held
and not yet committed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from actors.inbox_actor import InboxActor
from actors.pending_opens import PendingOpens
from config.actor_settings import ActorSettings
from config.settings import Settings
from store.clock import utcnow
from store.db import Database
from store.tables import AgentEvent, Customer, InboundMessage, Inbox, StickyAgent, Transaction, TransactionEvent
from tests.test_agent_reads_inbox_commits import _stream
from tests.test_close_while_delivering import _Agent, _Agents, _conversation, _crash, _forwarded, _message, _store_url


class _HoldingAgent(_Agent):
    """Available with room; each hold waits for `let_go`, then is taken (`refuse`: refused). Offers published are
    kept in order."""

    def __init__(self, user_id: int, refuse: bool = False) -> None:
        super().__init__(user_id)
        self.let_go = asyncio.Event()
        self.asked = asyncio.Event()
        self.refuse = refuse
        self.held: list[dict[str, Any]] = []
        self.published: list[dict[str, Any]] = []

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        self.held.append(offer)
        self.asked.set()
        await self.let_go.wait()
        return {"ok": not self.refuse, "reason": "busy" if self.refuse else None, "snapshot": self.snapshot()}

    async def publish(self, offer: dict[str, Any], told: list[Any] | None = None) -> dict[str, Any]:
        self.published.append(offer)
        return self.snapshot()


async def _new_customer(db: Database, org_id: int, inbox_id: int, *texts: str) -> tuple[int, list[InboundMessage]]:
    """A customer new to the inbox and their messages, stored unattached (as the gateway's intake leaves them)."""
    async with db.session() as session:
        customer = Customer(org_id=org_id, wa_id="15550002222", name="Dora")
        session.add(customer)
        await session.flush()
        messages = [_message(org_id, inbox_id, customer.id, text, None) for text in texts]
        session.add_all(messages)
    return customer.id, messages


async def _conversations_of(db: Database, customer_id: int) -> list[tuple[int, str, int | None, list[str],
                                                                          list[int]]]:
    """(id, state, offered to, its events' kinds, its messages' ids) of each conversation of the customer."""
    async with db.session() as session:
        rows = (await session.execute(select(Transaction.id, Transaction.state, Transaction.offered_to)
                                      .where(Transaction.customer_id == customer_id).order_by(Transaction.id))).all()
        found = []
        for tx_id, state, offered_to in rows:
            kinds = list((await session.scalars(select(TransactionEvent.kind).where(
                TransactionEvent.transaction_id == tx_id).order_by(TransactionEvent.id))).all())
            messages = list((await session.scalars(select(InboundMessage.id).where(
                InboundMessage.transaction_id == tx_id).order_by(InboundMessage.id))).all())
            found.append((tx_id, state, offered_to, kinds, messages))
        return found


async def _offers_shown(db: Database, user_id: int) -> list[Any]:
    async with db.session() as session:
        return [payload["transaction_id"] for payload in (await session.scalars(
            select(AgentEvent.payload).where(AgentEvent.user_id == user_id, AgentEvent.kind == "offer"))).all()]


def _counting(inbox: InboxActor, step: str) -> list[int]:
    """The inbox's store steps of one kind (`write`: transactions, `read`: read steps) from now on, counted."""
    counted: list[int] = []
    run = getattr(inbox.db, step)

    async def count(statements: Any) -> Any:
        counted.append(1)
        return await run(statements)

    setattr(inbox.db, step, count)
    return counted


def _store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, ActorSettings]:
    """A fresh store and the actors' settings on it (no control pass during a test)."""
    url = _store_url(backend, tmp_path, request)
    return url, ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                     inbox_sync_interval_s=3600))


async def _live_inbox(db: Database, settings: ActorSettings, refuse: bool = False,
                      let_go: bool = False) -> tuple[int, int, _HoldingAgent, InboxActor]:
    """(organization, inbox, its agent, the inbox's actor activated): a round-robin inbox whose one agent holds
    a conversation and has room for more."""
    org_id, user_id, inbox_id, _, _ = await _conversation(db)
    agent = _HoldingAgent(user_id, refuse=refuse)
    if let_go:
        agent.let_go.set()
    inbox = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
    assert (await inbox.activate())["exists"]
    return org_id, inbox_id, agent, inbox


async def _until(check: Any, what: str) -> None:
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not within 10 s: {what}")


@pytest.mark.parametrize("refused", [False, True], ids=["held", "refused"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_new_customer_is_opened_and_offered_in_one_commit_and_a_message_meanwhile_joins_the_same_conversation(
        tmp_path: Path, backend: str, refused: bool, request: pytest.FixtureRequest) -> None:
    """The opening message is taken with no write; while the agent is asked to hold the offer the customer writes
    again. One commit then opens the conversation with both messages and, when the agent held it, its offer: on
    the agent's stream with the conversation's id, which the hold, asked before the row existed, did not have. An
    agent who refused leaves it queued for the next pass, still one commit."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, agent, inbox = await _live_inbox(db, settings, refuse=refused)
        user_id = agent.user_id
        try:
            customer_id, (opening, follow_up) = await _new_customer(db, org_id, inbox_id, "hello", "are you there?")
            writes = _counting(inbox, "write")
            assert await inbox.ingest([_forwarded(opening, None)]) == {"attached": 0, "opening": 1}
            await asyncio.wait_for(agent.asked.wait(), 10)
            assert agent.held[0]["transaction_id"] is None  # no row yet: nothing is written before the commit
            assert await inbox.ingest([_forwarded(follow_up, None)]) == {"attached": 0, "opening": 1}
            assert await inbox.ingest([_forwarded(follow_up, None)]) == {"attached": 0, "opening": 0}  # redelivered
            assert await _conversations_of(db, customer_id) == [] and writes == []
            agent.let_go.set()

            async def opened() -> bool:
                return bool(await _conversations_of(db, customer_id)) and (refused or bool(agent.published))

            await _until(opened, "the conversation opened")
            ((tx_id, state, offered_to, kinds, messages),) = await _conversations_of(db, customer_id)
            assert messages == [opening.id, follow_up.id]
            assert writes == [1]  # opened (and offered) by one commit
            if refused:
                assert (state, offered_to, kinds) == ("queued", None, ["queued"])
                assert agent.published == [] and await _offers_shown(db, user_id) == []
            else:
                assert (state, offered_to, kinds) == ("offered", user_id, ["queued", "offered"])
                assert [offer["transaction_id"] for offer in agent.published] == [tx_id]
                assert agent.published[0]["offer_id"] == agent.held[0]["offer_id"]
                assert await _offers_shown(db, user_id) == [tx_id]
                # The round robin's pointer moved to the agent offered, in the same commit (with the inbox's fence).
                async with db.session() as session:
                    assert await session.scalar(select(Inbox.rotation_pointer).where(Inbox.id == inbox_id)) == user_id
            assert inbox._txs[tx_id].state == state and len(inbox._opens) == 0
            if not refused:
                # Accepted: the agent is shown the conversation with both messages, the one that came while its
                # offer was being held included.
                assert (await inbox.accept(tx_id, user_id))["status"] == 200
                assert [event for event in await _stream(db, user_id) if event[1] == tx_id] == [
                    ("offer", tx_id, opening.id), ("assigned", tx_id, opening.id), ("message", tx_id, follow_up.id)]
        finally:
            await _crash(inbox)
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_accepting_a_conversation_this_inbox_opened_reads_nothing_and_shows_what_came_while_it_rang(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Every message of a conversation the inbox opened and no agent held yet came through the inbox: the accept's
    one commit shows the agent the conversation with its first message and each later one, and remembers the agent
    as the customer's sticky agent, with no read step before it."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, agent, inbox = await _live_inbox(db, settings, let_go=True)
        user_id = agent.user_id
        try:
            customer_id, (opening, while_offered, later) = await _new_customer(
                db, org_id, inbox_id, "hello", "anyone?", "still there?")
            await inbox.ingest([_forwarded(opening, None)])

            async def offered() -> bool:
                return bool(agent.published)

            await _until(offered, "the offer")
            tx_id = agent.published[0]["transaction_id"]
            for message in (while_offered, later):
                assert await inbox.ingest([_forwarded(message, None)]) == {"attached": 1, "opening": 0}
            writes, reads = _counting(inbox, "write"), _counting(inbox, "read")
            accepted = await inbox.accept(tx_id, user_id)
            assert accepted["status"] == 200 and accepted["transaction"]["state"] == "assigned"
            assert (writes, reads) == ([1], [])
            shown = await _stream(db, user_id)
            async with db.session() as session:
                sticky = await session.scalar(select(StickyAgent.user_id).where(
                    StickyAgent.inbox_id == inbox_id, StickyAgent.customer_id == customer_id))
            assert shown == [("offer", tx_id, opening.id), ("assigned", tx_id, opening.id),
                             ("message", tx_id, while_offered.id), ("message", tx_id, later.id)]
            assert sticky == user_id
            assert inbox._txs[tx_id].handed == {opening.id, while_offered.id, later.id}
        finally:
            await _crash(inbox)
            await db.dispose()

    asyncio.run(run())


def test_a_new_conversation_whose_commit_failed_is_opened_by_a_later_pass(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The store refuses the pass's commit once (a lost connection): the conversation is not lost with it; the next
    pass opens and offers it, once."""
    url, settings = _store("sqlite", tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, agent, inbox = await _live_inbox(db, settings, let_go=True)
        user_id = agent.user_id
        try:
            customer_id, (opening,) = await _new_customer(db, org_id, inbox_id, "hello")
            write = inbox.db.write
            failed: list[int] = []

            async def fails_once(statements: Any) -> Any:
                if not failed:
                    failed.append(1)
                    raise OSError("the store went away")
                return await write(statements)

            inbox.db.write = fails_once  # type: ignore[method-assign]
            await inbox.ingest([_forwarded(opening, None)])

            async def offered() -> bool:
                return len(agent.published) == 1

            await _until(offered, "the offer of the retried pass")
            ((tx_id, state, offered_to, kinds, messages),) = await _conversations_of(db, customer_id)
            assert failed == [1] and len(agent.held) == 2  # the first hold was released with the failed commit
            assert (state, offered_to, kinds, messages) == ("offered", user_id, ["queued", "offered"], [opening.id])
            assert agent.published[0]["transaction_id"] == tx_id and "release" in agent.calls
        finally:
            await _crash(inbox)
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_inbox_dying_while_an_offer_of_a_new_conversation_is_held_opens_it_once_when_restarted(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Nothing of the conversation was written when the process died: its messages wait unattached in the store,
    and the restarted inbox opens one conversation with all of them."""
    url, settings = _store(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, stuck, inbox = await _live_inbox(db, settings)
        user_id = stuck.user_id
        restarted: InboxActor | None = None
        try:
            customer_id, (opening, follow_up) = await _new_customer(db, org_id, inbox_id, "hello", "are you there?")
            await inbox.ingest([_forwarded(opening, None)])
            await asyncio.wait_for(stuck.asked.wait(), 10)
            await inbox.ingest([_forwarded(follow_up, None)])
            await _crash(inbox)

            agent = _HoldingAgent(user_id)
            agent.let_go.set()
            restarted = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
            assert (await restarted.activate())["exists"]

            async def offered() -> bool:
                return bool(agent.published)

            await _until(offered, "the restarted inbox's offer")
            ((tx_id, state, offered_to, kinds, messages),) = await _conversations_of(db, customer_id)
            assert (state, offered_to, kinds) == ("offered", user_id, ["queued", "offered"])
            assert messages == [opening.id, follow_up.id]
            assert [offer["transaction_id"] for offer in agent.published] == [tx_id]
        finally:
            if restarted is not None:
                await _crash(restarted)
            await db.dispose()

    asyncio.run(run())


def test_a_control_pass_reads_every_page_of_unrouted_messages_while_earlier_ones_wait_for_their_commit(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of three: the first page's messages wait, unattached, for the commit opening their conversations
    (its offer is being held); a control pass reads on past them and finds a new customer's message on a later
    page. Once the hold is answered, each customer has one conversation with all of their messages."""
    from actors import inbox_ingest

    monkeypatch.setattr(inbox_ingest, "INGEST_PAGE", 3)
    url, settings = _store("sqlite", tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, agent, inbox = await _live_inbox(db, settings)
        try:
            first, waiting = await _new_customer(db, org_id, inbox_id, "one", "two", "three", "four")
            async with inbox._lock:
                await inbox._ingest_stored()
            inbox.request_routing()
            await asyncio.wait_for(agent.asked.wait(), 10)  # the pass holds the first customer's offer
            async with db.session() as session:
                late = Customer(org_id=org_id, wa_id="15550003333", name="Eve")
                session.add(late)
                await session.flush()
                late_message = _message(org_id, inbox_id, late.id, "hi", None)
                session.add(late_message)
            async with inbox._lock:
                await inbox._ingest_stored()  # as the control loop does: four waiting, then the new one
            assert inbox._opens.of([late.id]) is not None
            inbox.request_routing()
            agent.let_go.set()

            async def both_open() -> bool:
                return all([await _conversations_of(db, c) for c in (first, late.id)])

            await _until(both_open, "both conversations opened")
            (opened,) = await _conversations_of(db, first)
            assert opened[4] == [m.id for m in waiting]
            (later,) = await _conversations_of(db, late.id)
            assert later[4] == [late_message.id]
        finally:
            await _crash(inbox)
            await db.dispose()

    asyncio.run(run())


def test_pending_opens_keep_one_conversation_per_customer_until_their_pass_commits_or_gives_them_back() -> None:
    opens = PendingOpens()
    now = utcnow()
    first = {"id": 1, "customer_id": 7, "customer_ids": [7], "customer": {"name": "Dora", "wa_id": "1"}}
    pending = opens.add(1, 2, first, sticky_agent=None, now=now)
    assert pending.state.id < 0 and pending.state.state == "queued" and pending.row["customer_wa_id"] == "1"
    assert opens.of([9, 7]) is pending and opens.of([9]) is None
    assert pending.join({**first, "customer": {"name": "Dora B."}}) is False  # the same message again
    assert pending.join({"id": 2, "customer_id": 7, "customer": {"name": "Dora B."}}) is True
    assert pending.customer == {"name": "Dora B."}  # as the newest message shows them

    (taken,) = opens.take()
    assert taken is pending and opens.waiting == 0 and opens.of([7]) is pending  # in flight: still joined
    assert opens.take() == []
    assert opens.put_back([pending]) == 1 and opens.put_back([pending]) == 0
    assert opens.waiting == 1 and opens.take() == [pending]
    opens.landed([pending])
    assert len(opens) == 0 and opens.of([7]) is None and opens.put_back([pending]) == 0
    other = opens.add(1, 2, {**first, "id": 3, "customer_id": 8, "customer_ids": [8]}, sticky_agent=5, now=now)
    assert other.state.id != pending.state.id and other.state.sticky_agent == 5
    # A message taken in starts its customer's conversation, joins it (under any of its ids) or was in it already.
    assert opens.take_in(1, 2, {**first, "id": 4, "customer_id": 9, "customer_ids": [9]}, 6, now) == (1, 1)
    started = opens.of([9])
    assert started is not None and started.state.sticky_agent == 6
    assert opens.take_in(1, 2, {**first, "id": 5, "customer_id": 10, "customer_ids": [10, 9]}, None, now) == (1, 0)
    assert opens.take_in(1, 2, {**first, "id": 5, "customer_id": 10, "customer_ids": [10, 9]}, None, now) == (0, 0)
    assert [m["id"] for m in started.messages] == [4, 5]
