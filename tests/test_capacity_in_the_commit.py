"""An agent never holds more conversations than its capacity, even when its actor's memory of its holds is lost.

An agent's actor reserves capacity for a claim or an offer in memory (a hold) before the inbox commits the
assignment. When the actor's process dies between the hold and the commit, the restarted actor does not know the
hold, and another inbox may give the agent a conversation meanwhile: the commit that would then put the agent over
its capacity counts the agent's conversations in the store and is refused (409), nothing written, and the agent
rebuilds its work from the store.

Ray-free: real inbox actors and real agent actors in this process, on a real store (SQLite and PostgreSQL); "the
agent's process dies" is its actor object dropped and a new one activated on the same store.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from actors import agent_offers
from actors.agent_actor import AgentActor
from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from config.settings import Settings
from store import agent_streams
from store import routing_repo as repo
from store.agent_capacity import AtCapacity, check_capacity
from store.clock import utcnow
from store.db import Database
from store.tables import AgentEvent, Customer, Inbox, InboxAgent, PhoneNumber, Transaction
from tests.test_close_while_delivering import _conversation, _crash, _Inboxes, _message, _store_url
from tests.test_opening_in_one_commit import _until


class _HoldForgotten:
    """The inboxes' directory of one agent that forgets the first hold it answers before the inbox that asked
    commits: its process dies and a new one takes over (`restarted`), or the hold lapses while the commit is slow
    (`lapsed`). Then `meanwhile` runs (another inbox's claim)."""

    def __init__(self, org_id: int, user_id: int, settings: ActorSettings, how: str) -> None:
        self._org_id, self._user_id, self._settings, self._how = org_id, user_id, settings, how
        self.actor = self._new_actor()
        self.meanwhile: Any = None
        self.outcome_meanwhile: dict[str, Any] | None = None

    def _new_actor(self) -> AgentActor:
        return AgentActor(self._org_id, self._user_id, self._settings, _Inboxes())  # type: ignore[arg-type]

    def agent(self, org_id: int, user_id: int) -> Any:
        return self if self.meanwhile is not None else self.actor

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        raise AssertionError("not called")

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        answer = await self.actor.hold(offer, direct)
        if self._how == "restarted":
            dead, self.actor = self.actor, self._new_actor()
            for timer in dead._lapse_timers.values():
                timer.cancel()
        else:
            actor = self.actor

            async def lapsed() -> bool:
                return not actor.holds

            await _until(lapsed, "the hold lapsed")
        step, self.meanwhile = self.meanwhile, None
        self.outcome_meanwhile = await step()
        return answer  # type: ignore[no-any-return]

    def __getattr__(self, method: str) -> Any:
        return getattr(self.actor, method)


async def _second_inbox(db: Database, org_id: int, user_id: int, mode: str) -> tuple[int, int]:
    """(inbox, transaction): another inbox of the agent, its own number, with a new customer's conversation queued."""
    now = utcnow()
    async with db.session() as session:
        number = PhoneNumber(phone_number_id=uuid.uuid4().hex[:12], waba_id="waba")
        customer = Customer(org_id=org_id, wa_id="15550002222", name="Dora")
        session.add_all([number, customer])
        await session.flush()
        inbox = Inbox(org_id=org_id, name="Support", phone_number_id=number.phone_number_id, assignment_mode=mode,
                      reassign_after_s=30)
        session.add(inbox)
        await session.flush()
        session.add(InboxAgent(inbox_id=inbox.id, user_id=user_id, proficiency=1))
        tx = Transaction(org_id=org_id, inbox_id=inbox.id, customer_id=customer.id, customer_wa_id="15550002222",
                         state="queued", waiting_since=now, created_at=now, updated_at=now, tried=[])
        session.add(tx)
        await session.flush()
        session.add(_message(org_id, inbox.id, customer.id, "hi there", tx.id))
    return inbox.id, tx.id


async def _assigned_events(db: Database, user_id: int) -> list[int]:
    async with db.session() as session:
        payloads = (await session.scalars(select(AgentEvent.payload).where(
            AgentEvent.user_id == user_id, AgentEvent.kind == "assigned").order_by(AgentEvent.id))).all()
    return [int(p["transaction_id"]) for p in payloads]


async def _states(db: Database, *tx_ids: int) -> dict[int, tuple[str, int | None]]:
    async with db.session() as session:
        rows = (await session.execute(select(Transaction.id, Transaction.state, Transaction.agent_id)
                                      .where(Transaction.id.in_(tx_ids)))).all()
    return {int(i): (state, agent) for i, state, agent in rows}


@pytest.mark.parametrize(("answer", "how"), [("claim", "restarted"), ("accept", "restarted"), ("claim", "lapsed")])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_agent_that_forgot_a_hold_before_its_commit_is_not_put_over_capacity(
        tmp_path: Path, backend: str, answer: str, how: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent (capacity 1) holds for inbox A's conversation: a claim from a manual inbox, or an offer it then
    accepts. Before A commits, the agent forgets the hold (its process dies and a new one takes over, or the claim's
    hold lapses while A's commit is slow) and takes a claim from inbox B. A's assignment is then refused with 409
    naming the capacity: one conversation is the agent's, the other waits in A's queue, the agent's stream shows
    one assignment, and the agent's actor shows the one it holds."""
    # A claim's hold lapses at once (in a deployment: after 15 s, when the inbox's commit is that slow).
    monkeypatch.setattr(agent_offers, "DIRECT_HOLD_S", 0.0)
    monkeypatch.setattr(agent_offers, "HOLD_LAPSE_GRACE_S", 0.1)
    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    actor_call_timeout_s=10, inbox_sync_interval_s=3600,
                                                    agent_store_actors=0))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_a, _, first = await _conversation(db, mode="manual")
        inbox_b, second = await _second_inbox(db, org_id, user_id, "manual")
        if answer == "accept":  # inbox A routes by round robin: its routing pass offers `first`
            await db.write(lambda connection: connection.execute(
                update(Inbox).where(Inbox.id == inbox_a).values(assignment_mode="round_robin")))
        agents = _HoldForgotten(org_id, user_id, settings, how)
        assert (await agents.actor.set_status("available") or {}).get("max_concurrent") == 1
        b = InboxActor(org_id, inbox_b, settings, agents)  # type: ignore[arg-type]
        assert (await b.activate())["exists"]
        agents.meanwhile = lambda: b.claim(second, user_id)
        a = InboxActor(org_id, inbox_a, settings, agents)  # type: ignore[arg-type]
        assert (await a.activate())["exists"]
        if answer == "claim":
            outcome = await a.claim(first, user_id)
        else:
            async def offered() -> bool:
                return (await _states(db, first))[first] == ("offered", None)

            await _until(offered, "the offer committed")
            outcome = await a.accept(first, user_id)
        assert agents.outcome_meanwhile is not None and agents.outcome_meanwhile["status"] == 200
        assert outcome["status"] == 409 and outcome["detail"] == "agent is at capacity (1/1)", outcome
        states = await _states(db, first, second)
        assert states == {first: ("queued", None), second: ("assigned", user_id)}
        assert await _assigned_events(db, user_id) == [second]

        async def agent_shows_the_store() -> bool:
            return agents.actor.active == {second: inbox_b} and not agents.actor.holds

        await _until(agent_shows_the_store, "the agent's actor holding exactly what the store shows")
        for inbox in (a, b):
            await _crash(inbox)
        await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_commits_capacity_check_counts_the_agents_held_conversations_but_not_the_one_it_assigns(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = _store_url(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        # Held by the agent (capacity 1, as its state row says once its actor ran).
        org_id, user_id, _, _, held = await _conversation(db)
        settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                        agent_store_actors=0))
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        await actor.view()
        _, queued = await _second_inbox(db, org_id, user_id, "manual")

        def check(transaction_id: int) -> Callable[[Connection], str]:
            def statements(connection: Connection) -> str:
                try:
                    check_capacity(connection, user_id, transaction_id)
                except AtCapacity as error:
                    return str(error)
                return "free"
            return statements

        assert await db.write(check(queued)) == "agent is at capacity (1/1)"
        assert await db.write(check(held)) == "free"  # re-assigning what it holds (a retried commit) counts it once
        await actor.set_max_concurrent(2)
        assert await db.write(check(queued)) == "free"
        await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_commits_racing_for_an_agents_last_place_give_it_to_one(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Two inboxes' processes commit an assignment to the same agent (capacity 1, none held) at once: the first,
    still open when the second starts, gets it; the second counts it and is refused. (On PostgreSQL the stream's
    row lock orders them and the check, a statement after the lock, sees the first's commit.)"""
    url = _store_url(backend, tmp_path, request)

    async def setup() -> tuple[int, int, int, int]:
        db = Database(url, pool_size=1)
        org_id, user_id, _, _, first = await _conversation(db, mode="manual")
        settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                        agent_store_actors=0))
        await AgentActor(org_id, user_id, settings, _Inboxes()).view()  # type: ignore[arg-type]  # its state row
        _, second = await _second_inbox(db, org_id, user_id, "manual")
        await db.dispose()
        return org_id, user_id, first, second

    org_id, user_id, first, second = asyncio.run(setup())
    first_checked = threading.Event()
    outcomes: dict[int, str] = {}

    def assign(tx_id: int) -> None:
        """One inbox process's assignment commit, as `InboxAnswers._assign` makes it."""
        def statements(connection: Connection) -> str:
            now = utcnow()
            agent_streams.append_to_streams(connection, org_id, [
                agent_streams.work_started(user_id, "claimed", {"transaction_id": tx_id}, f"offer-{tx_id}")], now)
            try:
                check_capacity(connection, user_id, tx_id)
            except AtCapacity as error:
                return str(error)
            repo.save_transaction(connection, tx_id, {"state": "assigned", "agent_id": user_id, "assigned_at": now})
            if tx_id == first:
                first_checked.set()
                time.sleep(0.5)  # still open when the other one starts
            return "assigned"

        async def run() -> None:
            db = Database(url, pool_size=1)
            try:
                outcomes[tx_id] = await db.write(statements)
            finally:
                await db.dispose()

        asyncio.run(run())

    one = threading.Thread(target=assign, args=(first,))
    one.start()
    assert first_checked.wait(10)
    assign(second)
    one.join(10)
    assert outcomes == {first: "assigned", second: "agent is at capacity (1/1)"}
