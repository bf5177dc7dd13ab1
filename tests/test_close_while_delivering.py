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
from sqlalchemy import func, select

from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from config.licenses import AGENT_LICENSES
from config.settings import Settings
from store import routing_repo as repo
from store.clock import utcnow
from store.db import Database
from store.migrate import upgrade_to_head
from store.routing_repo import show_to_agents
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

    async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]]) -> None:
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


@pytest.mark.parametrize(("at_intake", "stream_shows_it"), [(True, True), (False, False), (False, True)],
                         ids=["attached-and-shown-at-intake", "attached-by-the-inbox",
                              "attached-by-the-inbox-shown-but-answered-late"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_follow_up_still_being_delivered_when_its_conversation_closes_is_shown_despite_the_inbox_dying(
        tmp_path: Path, at_intake: bool, stream_shows_it: bool, backend: str, request: pytest.FixtureRequest) -> None:
    """At intake the gateway attaches a follow-up and puts it on the agent's stream in one commit: it stays with
    the closed conversation, shown. One the inbox attached (its conversation not yet held when the gateway stored
    it) is shown only once the agent answers its delivery: unanswered at the close, it opens the customer's next
    conversation."""
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
                await show_to_agents(session, [(org_id, user_id, tx_id, repo.forwarded_payload(forward))],
                                     stream_lock=False)
            else:
                forward = _forwarded(follow_up, None)
        assert (await inbox.ingest([forward]))["attached"] == 1
        await asyncio.sleep(0.1)
        assert "deliver" in agent.calls and not agent.shown
        if stream_shows_it and not at_intake:  # the agent's commit landed; its answer is late (a loaded machine)
            async with db.session() as session:
                payload = repo.forwarded_payload(_forwarded(follow_up, None))
                await show_to_agents(session, [(org_id, user_id, tx_id, payload)], stream_lock=False)
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
            opened = set(await session.scalars(select(TransactionEvent.transaction_id)
                                               .where(TransactionEvent.kind == "queued")))
            on_stream = await session.scalar(select(func.count()).select_from(AgentEvent).where(
                AgentEvent.user_id == user_id, AgentEvent.kind == "message"))
        # Shown on the agent's stream with its conversation, or the customer's next conversation (offered anew):
        # never left attached to a closed conversation no agent was shown it in.
        if stream_shows_it:  # shown on the stream with its conversation: kept there, not shown twice
            assert (attached_to, on_stream) == (tx_id, 1)
        else:
            assert attached_to != tx_id and attached_to in opened, (
                f"message {follow_up.id} attached to {attached_to}, shown {agent.shown}")
        await _crash(restarted)
        await db.dispose()

    asyncio.run(run())


class _ClaimingAgent(_Agent):
    """Takes a claim's hold; its confirm (the assignment with the first message) is held like a delivery."""

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        self.calls.append("hold")
        return {"ok": True, "reason": None, "snapshot": self.snapshot()}

    async def confirm(self, offer_id: str, payload: dict[str, Any]) -> dict[str, Any]:
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


def test_a_claim_confirmed_after_its_agent_s_restart_reconciled_it_still_shows_the_first_message(
        tmp_path: Path) -> None:
    """The agent's process died between the inbox's commit of a claim and the confirm (the only event carrying the
    first message: no offer showed it). The restarted agent's catch-up shows the conversation as its work, without
    a first message; the inbox's retried confirm must still show it."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db)  # committed as the agent's by the inbox
        async with db.session() as session:
            first = await session.scalar(select(InboundMessage).where(InboundMessage.transaction_id == tx_id))
            assert first is not None
        agent = AgentActor(org_id, user_id, settings)
        agent._store = open_agent_store(url, linger_s=0, name="agent")
        try:
            await agent.view()  # activated: the catch-up shows the conversation ("reconciled")
            payload = {"transaction_id": tx_id, "inbox_id": inbox_id, "kind": "claimed",
                       "first_message": {"id": first.id, "summary": first.summary}}
            await agent.confirm("claim-offer", payload)
            await agent.confirm("claim-offer", payload)  # a retry: shown once
            shown = [(e["type"], e.get("kind"), (e.get("first_message") or {}).get("id"))
                     for e in await agent._events_after(0, 100) if e.get("transaction_id") == tx_id]
            assert shown == [("assigned", "reconciled", None), ("assigned", "claimed", first.id)], shown
        finally:
            await agent.store.close()
            await db.dispose()

    asyncio.run(run())
