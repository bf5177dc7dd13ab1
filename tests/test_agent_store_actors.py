"""On PostgreSQL agents reach the store through a few shared store actors (`actors/agent_store_actor.py`), so
the server's connections do not grow with the agents; and a commit whose answer was lost is not repeated.

What a user (an operator watching `pg_stat_activity`, an agent on the workspace stream) would see: the
agents' connections are the store actors' only, at most `agent_store_actors * agent_store_connections`;
routing goes on through a store actor's SIGKILL; a step whose commit landed but whose answer was lost
shows its events once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlalchemy import text

from actors.agent_actor import AgentActor
from actors.names import agent_store_actor_name
from config.actor_settings import ActorSettings
from config.settings import Settings
from store.agent_store import open_agent_store
from store.agent_store_steps import AgentStore, Step
from store.agent_streams import message_shown
from store.db import Database
from store.errors import StoreUnavailable
from store.migrate import upgrade_to_head
from store.routing_repo import append_in_transaction
from store.tables import Organization, User
from tests.fault_injection import actor_pid
from tests.routing_support import Scenario, customer_id, scenario
from tests.store_rows import hand_on, held_conversation
from tests.support import Gateway, eventually, query_db

DEFAULTS = Settings.model_fields
STORE_ACTORS = int(DEFAULTS["agent_store_actors"].default)
CONNECTIONS_PER_STORE_ACTOR = int(DEFAULTS["agent_store_connections"].default)


def _agents_connections(sc: Scenario) -> list[str]:
    """application_name of every connection to this test's database opened by an agent or a store actor."""
    return [name for (name,) in query_db(
        sc.gateway, "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'wa-router agent%'")]


@pytest.mark.ray
def test_on_postgres_agents_step_through_the_store_actors_and_hold_no_connection_of_their_own(
        pg_gateway: Gateway) -> None:
    with scenario(pg_gateway) as sc:
        agents = sc.agents(6)
        sc.inbox(agents)
        first = agents[0]
        with sc.socket(first) as sock:
            for other in agents[1:]:
                sc.status(other, "offline")
            customer = customer_id()
            sc.send(customer, "where is my order?")
            tx_id = sock.next("offer")["transaction_id"]
            sc.do(tx_id, "accept", first)
            assert sock.next("assigned")["transaction_id"] == tx_id
            sc.send(customer, "it was due yesterday")
            assert sock.next("message")["message"]["summary"] == "it was due yesterday"
            sc.do(tx_id, "close", first)
            assert sock.next("transaction_closed")["transaction_id"] == tx_id

            # Every agent stepped (status changes, the whole conversation): none holds a connection of its own.
            names = _agents_connections(sc)
            assert names, "the store actors keep their connections for a while after use"
            assert all(n.startswith("wa-router agent-store ") for n in names), names
            assert len(names) <= STORE_ACTORS * CONNECTIONS_PER_STORE_ACTOR
            live = {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                    if e.get("namespace") == sc.gateway.namespace}
            assert {agent_store_actor_name(a.id % STORE_ACTORS) for a in agents} <= live
            assert query_db(sc.gateway, "SELECT state, agent_id FROM transactions WHERE id = :id",
                            id=tx_id) == [("closed", first.id)]


@pytest.mark.ray
def test_on_postgres_routing_goes_on_through_a_store_actors_sigkill(pg_gateway: Gateway) -> None:
    with scenario(pg_gateway) as sc:
        (agent,) = sc.agents(1)
        sc.inbox([agent], reassign_after_s=60)
        name = agent_store_actor_name(agent.id % STORE_ACTORS)
        with sc.socket(agent) as sock:
            pid = actor_pid(name, sc.gateway.namespace)
            assert pid is not None, f"{name} runs the agent's steps"
            os.kill(pid, signal.SIGKILL)
            customer = customer_id()
            sc.send(customer, "hello while the store actor restarts")
            offer = sock.next("offer", timeout=60)
            sc.do(offer["transaction_id"], "accept", agent)
            assert sock.next("assigned")["transaction_id"] == offer["transaction_id"]
            sc.send(customer, "still there?")
            assert sock.next("message")["message"]["summary"] == "still there?"
            restarted = eventually(lambda: actor_pid(name, sc.gateway.namespace), what="store actor back")
            assert restarted != pid
            # Shown once each, whatever the kill interrupted.
            kinds = [e["type"] for e in sock.events if e.get("transaction_id") == offer["transaction_id"]]
            assert kinds == ["offer", "assigned", "message"], kinds


# ---------------------------------------------------------------- a commit whose answer was lost


class _AnswerLost(AgentStore):
    """The agent's real store, whose next commit (write step) lands (or not) and then answers StoreUnavailable."""

    reads_from_any_loop = True

    def __init__(self, store: AgentStore) -> None:
        self._store = store
        self.lose_next: str | None = None  # "after commit" | "before commit"
        self.before_next_write: Callable[[], Awaitable[None]] | None = None

    async def _run(self, step: Step[Any], write: bool = False) -> Any:
        if not write:
            return await self._store.run(step, write)
        before, self.before_next_write = self.before_next_write, None
        if before is not None:
            await before()
        lose, self.lose_next = self.lose_next, None
        if lose == "before commit":
            raise StoreUnavailable("connection lost before the commit")
        result = await self._store.run(step, write)
        if lose == "after commit":
            raise StoreUnavailable("connection lost after the commit")
        return result

    async def close(self) -> None:
        await self._store.close()


async def _new_agents(db: Database, count: int) -> tuple[int, list[int]]:
    async with db.session() as session:
        org = Organization(name="Acme", webhook_verify_token=uuid.uuid4().hex)
        session.add(org)
        await session.flush()
        users = [User(org_id=org.id, name=f"A{i}", email=f"{uuid.uuid4().hex}@acme.test", role="member")
                 for i in range(count)]
        session.add_all(users)
        await session.flush()
        return org.id, [u.id for u in users]


@asynccontextmanager
async def _agent(url: str, tmp_path: Path) -> AsyncIterator[tuple[AgentActor, _AnswerLost, Database]]:
    db = Database(url, pool_size=1)
    org_id, (user_id,) = await _new_agents(db, 1)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))
    actor = AgentActor(org_id, user_id, settings)
    store = _AnswerLost(open_agent_store(url, linger_s=0, name="x"))
    actor._store = store  # before activation: `_open_store` keeps it
    try:
        yield actor, store, db
    finally:
        await store.close()
        await db.dispose()


def _delivery(tx_id: int, message_id: int) -> list[tuple[int, list[dict[str, Any]]]]:
    return [(tx_id, [{"id": message_id, "summary": f"message {message_id}"}])]


def test_a_delivery_whose_commit_landed_but_whose_answer_was_lost_is_shown_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)

    async def run() -> None:
        async with _agent(url, tmp_path) as (actor, store, db):
            await actor.view()  # activated
            tx, (m100, m101, m102) = await held_conversation(db, actor.org_id, actor.user_id, 3)

            async def gateway_shows_a_follow_up() -> None:  # just before the agent's commit
                async with db.session() as session:
                    follow_up = {"id": m100, "inbox_id": 3, "summary": "m 100"}
                    await append_in_transaction(session, [(actor.org_id, message_shown(actor.user_id, tx, follow_up))])

            store.before_next_write = gateway_shows_a_follow_up
            store.lose_next = "after commit"
            await actor.deliver(3, _delivery(tx, m101))  # landed: the agent finds it (after the gateway's), goes on
            await actor.deliver(3, _delivery(tx, m101))  # the inbox's retry after a lost answer: nothing new
            store.lose_next = "before commit"
            with pytest.raises(StoreUnavailable):  # did not land: the caller retries
                await actor.deliver(3, _delivery(tx, m102))
            await actor.deliver(3, _delivery(tx, m102))
            async with db.session() as session:
                rows = (await session.execute(text(
                    "SELECT id, json_extract(payload, '$.message.id') FROM agent_events "
                    "WHERE user_id = :u AND kind = 'message' ORDER BY id"), {"u": actor.user_id})).all()
            assert [message for _, message in rows] == [m100, m101, m102]
            # The stream shows what the store holds, with the store's ids.
            shown = [e for e in actor._recent if e["type"] == "message"]
            assert [(e["id"], e["message"]["id"]) for e in shown] == [(i, m) for i, m in rows]

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_delivery_retried_across_an_agent_restart_is_shown_once(tmp_path: Path, backend: str,
                                                                   request: pytest.FixtureRequest) -> None:
    """Exactly-once comes from the store: a restarted agent knows what its stream already showed."""
    url = (f"sqlite+aiosqlite:///{tmp_path}/store.db" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    upgrade_to_head(url)

    async def run() -> None:
        async with _agent(url, tmp_path) as (actor, _store, db):
            await actor.view()
            tx, (m201, m202, m203) = await held_conversation(db, actor.org_id, actor.user_id, 3)
            # A reply the agent wrote, echoed on its stream: its id is an outbox id, not a customer message's.
            await actor.push_event("message", {"transaction_id": tx, "inbox_id": 3,
                                               "message": {"id": m203, "direction": "outbound", "text": "hi"}})
            await actor.deliver(3, _delivery(tx, m201))
            # The process dies after the commit, before the inbox heard the answer; a new one takes over.
            restarted = AgentActor(actor.org_id, actor.user_id, actor._settings)
            restarted._store = open_agent_store(url, linger_s=0, name="y")
            try:
                await restarted.view()
                await restarted.deliver(3, _delivery(tx, m201))  # the inbox's retry
                await restarted.deliver(3, _delivery(tx, m202))
                await restarted.deliver(3, _delivery(tx, m203))  # the customer's message: not the reply, same id
                async with db.session() as session:
                    rows = (await session.execute(text(
                        "SELECT payload FROM agent_events WHERE user_id = :u AND kind = 'message' ORDER BY id"),
                        {"u": actor.user_id})).scalars().all()
                shown = [((m := (p if isinstance(p, dict) else json.loads(p))["message"])["id"], m.get("direction"))
                         for p in rows]
                assert shown == [(m203, "outbound"), (m201, None), (m202, None), (m203, None)]
            finally:
                await restarted._store.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_message_handed_to_the_customer_s_next_conversation_is_shown_there_too(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A close whose agent had not answered a delivery yet hands the message to the customer's next conversation;
    when the delivery had landed after all and the same agent holds the next conversation, its stream shows the
    message there too (once per conversation, across a restart as well)."""
    url = (f"sqlite+aiosqlite:///{tmp_path}/store.db" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    upgrade_to_head(url)

    async def run() -> None:
        async with _agent(url, tmp_path) as (actor, _store, db):
            await actor.view()
            first, (m301,) = await held_conversation(db, actor.org_id, actor.user_id, 1)
            message = {"id": m301, "summary": "one more thing"}
            await actor.deliver(3, [(first, [message])])
            following = await hand_on(db, first, [m301])  # the customer's next conversation, the same agent's
            await actor.deliver(3, [(following, [message])])
            await actor.deliver(3, [(following, [message])])  # the inbox's retry
            restarted = AgentActor(actor.org_id, actor.user_id, actor._settings)
            restarted._store = open_agent_store(url, linger_s=0, name="y")
            try:
                await restarted.view()
                await restarted.deliver(3, [(first, [message]), (following, [message])])  # retries across the restart
                async with db.session() as session:
                    rows = (await session.execute(text(
                        "SELECT payload FROM agent_events WHERE user_id = :u AND kind = 'message' ORDER BY id"),
                        {"u": actor.user_id})).scalars().all()
                shown = [((p := (r if isinstance(r, dict) else json.loads(r)))["transaction_id"], p["message"]["id"])
                         for r in rows]
                assert shown == [(first, m301), (following, m301)]
            finally:
                await restarted._store.close()

    asyncio.run(run())


def test_an_agent_reads_the_inboxes_it_serves_off_the_message_path(tmp_path: Path) -> None:
    """Snapshot pushes use the cached list; a call from an inbox it does not know, a resync or a presence change
    reads it again (an inbox that just gained the agent must hear of it)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    upgrade_to_head(url)

    async def run() -> list[int]:
        async with _agent(url, tmp_path) as (actor, store, _db):
            await actor.view()
            assert actor._notifying is not None
            await actor._notifying  # activation pushed its snapshot: the list is cached
            reads: list[str] = []
            read = store.served_inboxes

            async def counted(user_id: int) -> dict[int, str]:
                reads.append("read")
                return await read(user_id)

            store.served_inboxes = counted  # type: ignore[method-assign]
            seen = [len(reads)]
            for _ in range(3):  # three snapshot pushes on the message path
                await actor._served_inboxes()
            seen.append(len(reads))
            actor._heard_from(41)  # an inbox the agent does not know of offered it something
            await actor._served_inboxes()
            seen.append(len(reads))
            await actor.resync()
            await actor._served_inboxes()
            seen.append(len(reads))
            return seen

    assert asyncio.run(run()) == [0, 0, 1, 2]
