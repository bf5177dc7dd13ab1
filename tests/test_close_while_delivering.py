"""A follow-up handed to an agent whose actor has not answered the delivery yet, when the conversation closes and
the inbox's process dies before the delivery got through: the customer's message is still shown (the long
fault-injection soak's never-shown messages).

Ray-free: the inbox actor runs in this process on a real SQLite store, with agents that answer every call at once
but hold a delivery until told; "the process dies" is the inbox object dropped with its mailboxes, and a new one
activated on the same store (what Ray's restart does).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from config.licenses import AGENT_LICENSES
from config.settings import Settings
from store import agent_streams
from store import routing_repo as repo
from store.clock import utcnow
from store.db import Database
from store.migrate import upgrade_to_head
from store.routing_repo import append_in_transaction
from store.tables import (
    AgentEvent,
    Customer,
    InboundMessage,
    Inbox,
    InboxAgent,
    Organization,
    PhoneNumber,
    Transaction,
    TransactionEvent,
    User,
)


class _Agent:
    """An agent actor as an inbox sees it: every call answered with a snapshot at once, deliveries held while
    `frozen` (a SIGSTOPped or restarting actor: the inbox's mailbox keeps trying)."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.shown: list[tuple[int, int]] = []  # (transaction id, message id) the stream showed
        self.calls: list[str] = []

    def snapshot(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "status": "available", "max_concurrent": 5, "active_count": 0,
                "has_pending_offer": False, "idle_since": None, "version": None}

    async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]],
                      told: list[Any] | None = None) -> None:
        self.calls.append("deliver")
        await self.thawed.wait()
        for tx_id, messages in deliveries:
            for message in messages:
                if message["id"] not in {m for _, m in self.shown}:
                    self.shown.append((tx_id, message["id"]))

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        self.calls.append("hold")
        return {"ok": False, "reason": "busy", "snapshot": self.snapshot()}

    def __getattr__(self, method: str) -> Any:
        async def answer(*args: Any) -> dict[str, Any]:
            self.calls.append(method)
            return self.snapshot()

        return answer


class _Agents:
    def __init__(self, agent: _Agent) -> None:
        self._agent = agent

    def agent(self, org_id: int, user_id: int) -> _Agent:
        return self._agent

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        raise AssertionError("not called")


async def _conversation(db: Database, mode: str = "round_robin") -> tuple[int, int, int, int, int]:
    """(org, agent, inbox, customer, transaction): the customer's conversation with its first message; held by the
    agent, who accepted it from an offer, or (manual inbox) queued."""
    now = utcnow()
    async with db.session() as session:
        org = Organization(name="Acme", webhook_verify_token=uuid.uuid4().hex)
        session.add(org)
        await session.flush()
        user = User(org_id=org.id, name="Ana", email=f"{uuid.uuid4().hex}@acme.test", role="member",
                    licenses=sorted(AGENT_LICENSES))
        number = PhoneNumber(phone_number_id=uuid.uuid4().hex[:12], waba_id="waba")
        session.add_all([user, number])
        await session.flush()
        inbox = Inbox(org_id=org.id, name="Sales", phone_number_id=number.phone_number_id,
                      assignment_mode=mode, reassign_after_s=30)
        customer = Customer(org_id=org.id, wa_id="15550001111", name="Carla")
        session.add_all([inbox, customer])
        await session.flush()
        session.add(InboxAgent(inbox_id=inbox.id, user_id=user.id, proficiency=1))
        held = mode != "manual"
        tx = Transaction(org_id=org.id, inbox_id=inbox.id, customer_id=customer.id, customer_wa_id="15550001111",
                         state="assigned" if held else "queued", agent_id=user.id if held else None,
                         assigned_at=now if held else None, waiting_since=now, created_at=now, updated_at=now,
                         tried=[])
        session.add(tx)
        await session.flush()
        session.add(_message(org.id, inbox.id, customer.id, "hello", tx.id))
        if held:
            session.add_all([TransactionEvent(transaction_id=tx.id, kind=kind, agent_id=user.id, at=now, detail={})
                             for kind in ("offered", "accepted")])
        return org.id, user.id, inbox.id, customer.id, tx.id


def _message(org_id: int, inbox_id: int, customer_id: int, text: str, tx_id: int | None) -> InboundMessage:
    return InboundMessage(org_id=org_id, wamid=f"wamid.{uuid.uuid4().hex}", waba_id="waba", inbox_id=inbox_id,
                          transaction_id=tx_id, from_wa_id="15550001111", customer_id=customer_id,
                          customer_name="Carla", type="text", summary=text, sent_at=utcnow(), raw={})


def _forwarded(message: InboundMessage, tx_id: int | None) -> dict[str, Any]:
    """The gateway's forward of a follow-up (`actors.messages.StoredMessage`): `tx_id` when attached at intake."""
    return {"id": message.id, "inbox_id": message.inbox_id, "wamid": message.wamid, "from_wa_id": message.from_wa_id,
            "from_user_id": None, "customer_name": message.customer_name, "type": message.type,
            "summary": message.summary, "sent_at": message.sent_at.isoformat(), "customer_id": message.customer_id,
            "customer": {"id": message.customer_id, "user_id": None, "wa_id": message.from_wa_id, "username": None,
                         "name": message.customer_name},
            "transaction_id": tx_id}


async def _crash(inbox: InboxActor) -> None:
    """SIGKILL, as far as this process can tell: its tasks (mailboxes, control loop, timers) stop mid-way."""
    tasks = [inbox._control, inbox._boot, inbox._routing_requested, *inbox._timers.values(),
             *(m._worker for m in inbox._link._mailboxes.values())]
    for task in tasks:
        if task is not None:
            task.cancel()
    await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
    await inbox.db.dispose()


@pytest.mark.parametrize("at_intake", [True, False], ids=["attached-and-shown-at-intake", "attached-by-the-inbox"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_follow_up_still_being_delivered_when_its_conversation_closes_is_shown_despite_the_inbox_dying(
        tmp_path: Path, at_intake: bool, backend: str, request: pytest.FixtureRequest) -> None:
    """At intake the gateway attaches a follow-up and puts it on the agent's stream in one commit; the inbox does
    the same for one it attaches (its conversation not yet held when the gateway stored it). Either way it stays
    with the closed conversation, shown once, although the agent had not answered its delivery when the inbox's
    process died."""
    url = (f"sqlite+aiosqlite:///{tmp_path}/store.db" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    upgrade_to_head(url)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    actor_call_timeout_s=0.3, inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, customer_id, tx_id = await _conversation(db)
        agent = _Agent(user_id)
        inbox = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        assert (await inbox.activate())["exists"]
        # The customer writes again: the gateway attaches the follow-up at intake and forwards it; the inbox hands
        # it to the agent, whose actor does not answer yet (the delivery is retried from the inbox's mailbox).
        agent.thawed.clear()
        async with db.session() as session:
            follow_up = _message(org_id, inbox_id, customer_id, "one more thing", tx_id if at_intake else None)
            session.add(follow_up)
            await session.flush()
            if at_intake:
                forward = _forwarded(follow_up, tx_id)
                shown = agent_streams.message_shown(user_id, tx_id, repo.forwarded_payload(forward))
                await append_in_transaction(session, [(org_id, shown)])
            else:
                forward = _forwarded(follow_up, None)
        assert (await inbox.ingest([forward]))["attached"] == 1
        await asyncio.sleep(0.1)
        assert "deliver" in agent.calls and not agent.shown
        # The agent closes the conversation (its desk, through the gateway): the close commits.
        assert (await inbox.close(tx_id, user_id, False))["status"] == 200
        # The inbox's process dies before the delivery got through; Ray starts a new one on the same store.
        await _crash(inbox)
        agent.thawed.set()
        restarted = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        await restarted.activate()
        await asyncio.sleep(0.5)  # the new process's hand-overs and routing pass
        async with db.session() as session:
            attached_to = await session.scalar(select(InboundMessage.transaction_id)
                                               .where(InboundMessage.id == follow_up.id))
            opened = set(await session.scalars(select(Transaction.id).where(Transaction.inbox_id == inbox_id)))
            on_stream = await session.scalar(select(func.count()).select_from(AgentEvent).where(
                AgentEvent.user_id == user_id, AgentEvent.kind == "message"))
        # Shown on the agent's stream with its conversation: kept there, not shown twice, nothing opened for it.
        assert (attached_to, on_stream) == (tx_id, 1)
        assert opened == {tx_id}, f"message {follow_up.id}: the inbox's conversations {opened}, shown {agent.shown}"
        await _crash(restarted)
        await db.dispose()

    asyncio.run(run())


class _ClaimingAgent(_Agent):
    """Takes a claim's hold; its confirm (the assignment with the first message) is held like a delivery."""

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        self.calls.append("hold")
        return {"ok": True, "reason": None, "snapshot": self.snapshot()}

    async def confirm(self, offer_id: str, payload: dict[str, Any], told: list[Any] | None = None) -> dict[str, Any]:
        self.calls.append("confirm")
        await self.thawed.wait()
        first = payload.get("first_message")
        if first is not None:
            self.shown.append((int(payload["transaction_id"]), int(first["id"])))
        return self.snapshot()


def test_a_claimed_conversation_s_first_message_is_shown_when_the_inbox_dies_before_its_agent_confirmed(
        tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    actor_call_timeout_s=0.3, inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db, mode="manual")
        async with db.session() as session:
            first = await session.scalar(select(InboundMessage.id).where(InboundMessage.transaction_id == tx_id))
        agent = _ClaimingAgent(user_id)
        inbox = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        assert (await inbox.activate())["exists"]
        agent.thawed.clear()
        assert (await inbox.claim(tx_id, user_id))["status"] == 200
        await _crash(inbox)
        agent.thawed.set()
        restarted = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        await restarted.activate()
        await asyncio.sleep(0.5)
        assert (tx_id, first) in agent.shown, agent.calls
        await _crash(restarted)
        await db.dispose()

    asyncio.run(run())


def test_a_claim_confirmed_after_its_agent_s_restart_shows_its_first_message_once_from_the_inbox_s_commit(
        tmp_path: Path) -> None:
    """The agent's process died between the inbox's commit of a claim and the confirm. The assignment, with the
    conversation's first message (no offer showed it), is on the stream from the inbox's commit: the restarted
    agent has nothing to reconcile, and the inbox's retried confirm shows nothing twice."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db)  # committed as the agent's by the inbox
        first = await _first_of(db, tx_id)
        payload = await _assigned_by_inbox(db, org_id, user_id, inbox_id, tx_id, "claimed", first, "claim-offer")
        agent = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        agent._store = open_agent_store(url, linger_s=0, name="agent")
        try:
            await agent.view()  # activated after the inbox's commit
            await agent.confirm("claim-offer", payload)
            await agent.confirm("claim-offer", payload)  # a retry: shown once
            shown = [(e["type"], e.get("kind"), (e.get("first_message") or {}).get("id"))
                     for e in await agent._events_after(0, 100) if e.get("transaction_id") == tx_id]
            assert shown == [("assigned", "claimed", first)], shown
            assert tx_id in agent.active
        finally:
            await agent.store.close()
            await db.dispose()

    asyncio.run(run())


# ---------------------------------------------------------------- a delivery that lands after the close


class _Inboxes:
    """A real agent actor's directory here: its snapshot pushes to inboxes are answered and dropped (no Ray: an
    actor's default directory would join whatever Ray cluster runs on the machine)."""

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        return self

    def __getattr__(self, method: str) -> Any:
        async def answer(*args: Any) -> None:
            return None

        return answer


class _HeldDelivery(_Agent):
    """A real agent actor's deliveries, held while `thawed` is clear (its commit late under load); the inbox's
    other calls answered at once."""

    def __init__(self, actor: Any) -> None:
        super().__init__(actor.user_id)
        self.actor = actor
        self.landed = asyncio.Event()

    async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]],
                      told: list[Any] | None = None) -> None:
        self.calls.append("deliver")
        await self.thawed.wait()
        await self.actor.deliver(inbox_id, deliveries, told)
        self.landed.set()


async def _transaction_of(db: Database, message_id: int) -> int | None:
    """The conversation the message is attached to now (None: unattached)."""
    async with db.session() as session:
        found: int | None = await session.scalar(select(InboundMessage.transaction_id)
                                                 .where(InboundMessage.id == message_id))
    return found


async def _shown_on_stream(db: Database, user_id: int) -> list[tuple[int, int]]:
    """(transaction id, message id) of the customer messages the agent's stream shows, in order."""
    async with db.session() as session:
        payloads = (await session.scalars(select(AgentEvent.payload).where(
            AgentEvent.user_id == user_id, AgentEvent.kind == "message").order_by(AgentEvent.id))).all()
    return [(int(p["transaction_id"]), int(p["message"]["id"])) for p in payloads]


async def _close_handing_back(db: Database, inbox_id: int, tx_id: int, agent_id: int, unshown: list[int]) -> list[int]:
    """A close's commit (`InboxAnswers._close`): the conversation closed, its unshown messages handed back."""
    def statements(connection: Connection) -> list[int]:
        repo.save_transaction(connection, tx_id, {"state": "closed", "closed_at": utcnow()})
        return repo.detach_messages(connection, inbox_id, tx_id, agent_id, unshown)

    return await db.write(statements)


def _store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    url = (f"sqlite+aiosqlite:///{tmp_path}/store.db" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    upgrade_to_head(url)
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_follow_up_the_inbox_attaches_is_shown_by_its_commit_and_stays_with_the_conversation_through_a_close(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A follow-up the inbox attaches to the conversation an agent holds is on the agent's stream from the
    attaching commit: the close keeps it with the conversation although the agent's answer to the delivery is
    late (a loaded machine), and the late delivery shows nothing twice."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    actor_call_timeout_s=0.3, inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, customer_id, tx_id = await _conversation(db)
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        agent = _HeldDelivery(actor)
        inbox = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        try:
            await actor.view()
            assert (await inbox.activate())["exists"]
            agent.thawed.clear()
            async with db.session() as session:
                follow_up = _message(org_id, inbox_id, customer_id, "one more thing", None)
                session.add(follow_up)
            assert (await inbox.ingest([_forwarded(follow_up, None)]))["attached"] == 1
            assert await _shown_on_stream(db, user_id) == [(tx_id, follow_up.id)]  # before the agent answered
            assert (await inbox.close(tx_id, user_id, False))["status"] == 200
            agent.thawed.set()  # the inbox's mailbox retries the delivery: the agent's answer comes now
            await asyncio.wait_for(agent.landed.wait(), 10)
            assert await _transaction_of(db, follow_up.id) == tx_id
            assert await _shown_on_stream(db, user_id) == [(tx_id, follow_up.id)]
        finally:
            await _crash(inbox)
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_agent_shows_a_message_with_a_conversation_only_while_it_is_attached_to_it(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Whichever of a close and a delivery commits first wins: a delivery committed first keeps its message with
    the closing conversation; one committed after the close handed the message on (to the customer's next
    conversation, maybe attached there already) writes nothing for the old one, and is shown with the new one."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, customer_id, tx_id = await _conversation(db)
        async with db.session() as session:
            early, late = (_message(org_id, inbox_id, customer_id, text, tx_id) for text in ("early", "late"))
            session.add_all([early, late])
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        try:
            await actor.view()
            await actor.deliver(inbox_id, [(tx_id, [{"id": early.id, "summary": "early"}])])
            handed_back = await _close_handing_back(db, inbox_id, tx_id, user_id, [early.id, late.id])
            assert handed_back == [late.id]  # `early` is on the stream: it stays with its conversation
            await actor.deliver(inbox_id, [(tx_id, [{"id": late.id, "summary": "late"}])])

            def next_conversation(connection: Connection) -> int:
                now = utcnow()
                next_tx = repo.insert_transaction(connection, {
                    "org_id": org_id, "inbox_id": inbox_id, "customer_id": customer_id, "state": "assigned",
                    "agent_id": user_id, "assigned_at": now, "waiting_since": now, "created_at": now,
                    "updated_at": now, "tried": []})
                repo.attach_messages(connection, next_tx, [late.id])
                return next_tx

            next_tx = await db.write(next_conversation)
            # A retry of the old delivery joined with the new conversation's (one call, as a mailbox joins them).
            await actor.deliver(inbox_id, [(tx_id, [{"id": late.id, "summary": "late"}]),
                                           (next_tx, [{"id": late.id, "summary": "late"}])])
            assert await _shown_on_stream(db, user_id) == [(tx_id, early.id), (next_tx, late.id)]
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


def test_on_postgres_a_delivery_waits_for_a_close_handing_its_message_on_and_then_skips_it(
        postgres_url: str, tmp_path: Path) -> None:
    """The close's hand-back takes the agent's stream lock first: the agent's delivery commit, which takes it
    too, waits for the close's commit and then finds its message no longer attached."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    upgrade_to_head(postgres_url)
    settings = ActorSettings.from_settings(Settings(database_url=postgres_url,
                                                    secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(postgres_url, pool_size=2)
        org_id, user_id, inbox_id, customer_id, tx_id = await _conversation(db)
        async with db.session() as session:
            late = _message(org_id, inbox_id, customer_id, "late", tx_id)
            session.add(late)
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(postgres_url, linger_s=0, name="agent")
        try:
            await actor.view()
            async with db.engine.connect() as connection:
                async with connection.begin():  # the close's commit, under way
                    assert await connection.run_sync(
                        lambda c: repo.detach_messages(c, inbox_id, tx_id, user_id, [late.id])) == [late.id]
                    delivery = asyncio.ensure_future(actor.deliver(inbox_id, [(tx_id, [{"id": late.id}])]))
                    await asyncio.sleep(0.5)
                    assert not delivery.done()  # waiting for the stream lock
                await asyncio.wait_for(delivery, 10)
            assert await _shown_on_stream(db, user_id) == []
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


def test_on_postgres_a_close_waits_for_a_delivery_under_way_and_keeps_its_message(
        postgres_url: str, tmp_path: Path) -> None:
    """The other order: the agent's delivery commit holds the stream lock, its event written but not committed.
    The close's hand-back waits for it, then sees the event and keeps the message with the conversation."""
    import asyncpg

    from store.agent_store_postgres import PostgresTx, asyncpg_dsn
    from store.agent_store_steps import _deliver_and_read

    upgrade_to_head(postgres_url)

    async def run() -> None:
        db = Database(postgres_url, pool_size=2)
        org_id, user_id, inbox_id, customer_id, tx_id = await _conversation(db)
        async with db.session() as session:
            late = _message(org_id, inbox_id, customer_id, "late", tx_id)
            session.add(late)
        connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await connection.execute("INSERT INTO agent_states (user_id, org_id, status, max_concurrent, "
                                     "status_changed_at, missed_in_a_row, epoch) VALUES ($1, $2, 'offline', 1, "
                                     "now(), 0, 1)", user_id, org_id)
            delivery = connection.transaction()
            await delivery.start()  # the agent's step, as its store runs it, held before its commit
            event = ("message", {"transaction_id": tx_id, "inbox_id": inbox_id, "message": {"id": late.id}})
            assert len(await _deliver_and_read(PostgresTx(connection), org_id, user_id, [event], utcnow(), 0)) == 1
            close = asyncio.ensure_future(_close_handing_back(db, inbox_id, tx_id, user_id, [late.id]))
            await asyncio.sleep(0.5)
            assert not close.done()  # waiting for the stream lock
            await delivery.commit()
            assert await asyncio.wait_for(close, 10) == []  # kept: the stream shows it
            assert await _shown_on_stream(db, user_id) == [(tx_id, late.id)]
        finally:
            await connection.close()
            await db.dispose()

    asyncio.run(run())


# ---------------------------------------------------------------- a confirm that lands after the close


class _HeldConfirm(_Agent):
    """A real agent actor's confirms (a claim's or a transfer's, carrying the conversation's first message), held
    while `thawed` is clear (its commit late under load), and its ends; a hold is taken at once, other calls
    answered."""

    def __init__(self, actor: Any) -> None:
        super().__init__(actor.user_id)
        self.actor = actor
        self.landed = asyncio.Event()
        self.ended = asyncio.Event()

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        self.calls.append("hold")
        return {"ok": True, "reason": None, "snapshot": self.snapshot()}

    async def confirm(self, offer_id: str, payload: dict[str, Any], told: list[Any] | None = None) -> dict[str, Any]:
        self.calls.append("confirm")
        await self.thawed.wait()
        snapshot = await self.actor.confirm(offer_id, payload, told)
        self.landed.set()
        return snapshot  # type: ignore[no-any-return]

    async def end(self, transaction_id: int, reason: str, at: str | None = None,
                  told: list[Any] | None = None) -> dict[str, Any]:
        self.calls.append("end")
        snapshot = await self.actor.end(transaction_id, reason, at, told)
        self.ended.set()
        return snapshot  # type: ignore[no-any-return]


async def _firsts_shown(db: Database, user_id: int) -> list[tuple[int, int | None]]:
    """(transaction id, first message id or None) of the `assigned`/`transferred` events on the agent's stream that
    start a conversation (a transfer away carries no first message either way), in order."""
    async with db.session() as session:
        payloads = (await session.scalars(select(AgentEvent.payload).where(
            AgentEvent.user_id == user_id, AgentEvent.kind.in_(("assigned", "transferred")))
            .order_by(AgentEvent.id))).all()
    return [(int(p["transaction_id"]), (p.get("first_message") or {}).get("id")) for p in payloads
            if p.get("direction") != "away" and p.get("kind") != "reconciled"]


def _confirmed(tx_id: int, inbox_id: int, kind: str, first_id: int) -> dict[str, Any]:
    """A confirm's payload as the inbox sends it (`TxState.summary` and the kind), trimmed."""
    return {"transaction_id": tx_id, "inbox_id": inbox_id, "kind": kind,
            "first_message": {"id": first_id, "summary": "hello"}}


async def _assigned_by_inbox(db: Database, org_id: int, user_id: int, inbox_id: int, tx_id: int, kind: str,
                             first_id: int, offer_id: str) -> dict[str, Any]:
    """The assignment's event as the inbox's commit writes it on the agent's stream (`store.agent_streams`); the
    payload the inbox then confirms with."""
    payload = _confirmed(tx_id, inbox_id, kind, first_id)
    await db.write(lambda connection: agent_streams.append_to_streams(
        connection, org_id, [agent_streams.work_started(user_id, kind, payload, offer_id)], utcnow()))
    return payload


async def _first_of(db: Database, tx_id: int) -> int:
    async with db.session() as session:
        first = await session.scalar(select(func.min(InboundMessage.id)).where(InboundMessage.transaction_id == tx_id))
    assert first is not None
    return int(first)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_claim_whose_confirm_comes_after_the_close_shows_its_first_message_once_and_takes_no_work(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A claim's assignment carries the conversation's first message (no offer showed it), written on the agent's
    stream by the claim's own commit. The agent's confirm is late; the close finds the message shown and keeps it
    with the conversation (nothing is handed on); the close's end, which the inbox's mailbox delivers after the late
    confirm, leaves the agent no closed conversation, and nothing is shown twice."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    actor_call_timeout_s=0.3, inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db, mode="manual")
        first = await _first_of(db, tx_id)
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        agent = _HeldConfirm(actor)
        inbox = InboxActor(org_id, inbox_id, settings, _Agents(agent))  # type: ignore[arg-type]
        try:
            await actor.view()
            assert (await inbox.activate())["exists"]
            agent.thawed.clear()
            assert (await inbox.claim(tx_id, user_id))["status"] == 200
            assert await _firsts_shown(db, user_id) == [(tx_id, first)]  # before any confirm
            assert (await inbox.close(tx_id, user_id, False))["status"] == 200
            assert await _transaction_of(db, first) == tx_id  # shown: kept with its conversation
            agent.thawed.set()  # the inbox's mailbox retries the confirm: it comes now, then the close's end
            await asyncio.wait_for(agent.ended.wait(), 10)
            after = agent.calls[agent.calls.index("confirm"):]
            assert set(after[:-1]) == {"confirm"} and after[-1] == "end"  # the confirm (and its retries) first
            assert await _firsts_shown(db, user_id) == [(tx_id, first)]
            assert actor.active == {} and (await actor.view() or {})["active_transactions"] == []
        finally:
            await _crash(inbox)
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["claimed", "transferred"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_first_message_a_confirm_showed_is_not_shown_again_when_a_restarted_inbox_hands_it_over(
        tmp_path: Path, backend: str, kind: str, request: pytest.FixtureRequest) -> None:
    """A restarted inbox hands a claimed or transferred conversation's first message over again (the confirm that
    showed it may have died with the previous process). An agent whose stream shows it in the confirm's event skips
    it, before and after its own restart: the message is shown once."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db)
        first = await _first_of(db, tx_id)
        message = {"id": first, "inbox_id": inbox_id, "summary": "hello"}
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        restarted = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        restarted._store = open_agent_store(url, linger_s=0, name="agent")
        try:
            await actor.view()
            await actor.confirm("an-offer", await _assigned_by_inbox(db, org_id, user_id, inbox_id, tx_id, kind, first,
                                                                     "an-offer"))
            await actor.deliver(inbox_id, [(tx_id, [message])])  # the restarted inbox's hand-over
            await restarted.view()  # the agent's own restart: what its stream shows is read from the store
            await restarted.deliver(inbox_id, [(tx_id, [message])])
            assert await _firsts_shown(db, user_id) == [(tx_id, first)]
            assert await _shown_on_stream(db, user_id) == []
        finally:
            await actor.store.close()
            await restarted.store.close()
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "restarted-agent"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_confirm_retried_after_its_conversation_closed_shows_nothing_and_takes_no_work(
        tmp_path: Path, backend: str, restarted: bool, request: pytest.FixtureRequest) -> None:
    """A confirm whose answer was slow is sent again by the inbox's mailbox; the first attempt lands, the close
    ends the conversation, then the retry comes. It writes no second assignment and takes no work on (the agent's
    capacity would stay taken by a closed conversation), in the same process and after the agent's restart."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db)
        first = await _first_of(db, tx_id)
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        later = actor
        try:
            await actor.view()
            await actor.confirm("the-offer", await _assigned_by_inbox(db, org_id, user_id, inbox_id, tx_id, "claimed",
                                                                      first, "the-offer"))
            await db.write(lambda connection: repo.save_transaction(connection, tx_id, {"state": "closed",
                                                                                       "closed_at": utcnow()}))
            await actor.end(tx_id, "closed")
            if restarted:
                later = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
                later._store = open_agent_store(url, linger_s=0, name="agent")
                await later.view()
            snapshot = await later.confirm("the-offer", _confirmed(tx_id, inbox_id, "claimed", first))
            assert await _firsts_shown(db, user_id) == [(tx_id, first)]
            assert later.active == {} and snapshot["active_count"] == 0
        finally:
            await actor.store.close()
            if later is not actor:
                await later.store.close()
            await db.dispose()

    asyncio.run(run())
