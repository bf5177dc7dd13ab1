"""A follow-up to a conversation an agent holds is attached, and put on the agent's stream, in the commit that
stores it (its inbox and its agent write nothing for it, and the inbox takes no lock for it) and reaches the agent
once, even when the gateway dies before forwarding it; one stored before a close is shown before the close, one
stored after it opens the customer's next conversation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray
from sqlalchemy import select

from store.agent_streams import message_shown
from store.db import Database
from store.routing_repo import append_in_transaction, message_payload
from store.tables import InboundMessage
from tests.routing_support import Agent, AgentSocket, Scenario, customer_id, scenario
from tests.support import Gateway, query_db

_COPIED = ", ".join(c.name for c in InboundMessage.__table__.columns if c.name not in ("id", "wamid", "summary"))


def _attached_but_never_told(sc: Scenario, tx_id: int, text: str) -> int:
    """A follow-up attached to the conversation whose agent was never told of it (a copy of the first message)."""
    ((message_id,),) = query_db(
        sc.gateway, f"INSERT INTO inbound_messages (wamid, summary, {_COPIED}) SELECT :wamid, :text, {_COPIED} "
        "FROM inbound_messages WHERE transaction_id = :tx ORDER BY id LIMIT 1 RETURNING id",
        wamid=f"wamid.lost.{customer_id()}", text=text, tx=tx_id)
    return int(message_id)


def _stored_but_never_forwarded(sc: Scenario, agent: Agent, tx_id: int, text: str) -> int:
    """What a gateway that died between its commit and the forward leaves: the follow-up attached and its
    `message` event on the agent's stream (the intake commit's own statements), nobody told."""
    message_id = _attached_but_never_told(sc, tx_id, text)

    async def show() -> None:
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                row = (await session.scalars(select(InboundMessage).where(InboundMessage.id == message_id))).one()
                shown = message_shown(agent.id, tx_id, message_payload(row))
                await append_in_transaction(session, [(row.org_id, shown)])
        finally:
            await db.dispose()

    asyncio.run(show())
    return message_id


def _events_showing(sc: Scenario, agent: Agent, text: str) -> int:
    """How many `message` events of the agent's stream, in the store, carry the text."""
    ((count,),) = query_db(sc.gateway, "SELECT count(*) FROM agent_events WHERE user_id = :user AND kind = 'message' "
                                       "AND CAST(payload AS TEXT) LIKE :text", user=agent.id, text=f"%{text}%")
    return int(count)


def _held(sc: Scenario, agent: Agent, sock: AgentSocket, customer: str, **identity: Any) -> int:
    """The customer's first message (`identity`: as `Scenario.send` takes it) offered to the agent, who accepts it:
    the conversation's id."""
    sc.send(customer, "hello", **identity)
    tx_id = int(sock.next("offer")["transaction_id"])
    sc.do(tx_id, "accept", agent)
    sock.next("assigned")
    return tx_id


def _attached_to(sc: Scenario, text: str) -> list[tuple[int]]:
    return [(int(t),) for (t,) in query_db(sc.gateway, "SELECT transaction_id FROM inbound_messages "
                                                       "WHERE summary = :s", s=text)]


@pytest.mark.ray
@pytest.mark.parametrize("store", ["gateway", "pg_gateway"])
def test_a_follow_up_is_attached_when_acknowledged_and_reaches_the_agent(store: str,
                                                                          request: pytest.FixtureRequest) -> None:
    gateway: Gateway = request.getfixturevalue(store)
    with scenario(gateway) as sc:
        (agent,) = sc.agents(1)
        sc.inbox([agent])
        with sc.socket(agent) as sock:
            customer = customer_id()
            tx_id = _held(sc, agent, sock, customer)
            text = f"it was due yesterday ({customer})"
            sc.send(customer, text)
            # Attached and on the agent's stream by the time Meta got its 200: no inbox or agent step in between.
            assert _attached_to(sc, text) == [(tx_id,)]
            assert _events_showing(sc, agent, text) == 1
            assert sock.next("message")["message"]["summary"] == text
            # Told of it, the agent read it: it wrote no second event.
            assert _events_showing(sc, agent, text) == 1


@pytest.mark.ray
def test_a_follow_up_whose_forward_was_lost_reaches_the_agent_once(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        tx_id = _held(sc, agent, sock, customer_id())
        cursor = max(int(e["id"]) for e in sock.events)
    message_id = _stored_but_never_forwarded(sc, agent, tx_id, "are you there?")
    # Nothing wakes the agent. The workspace, whose gateway died with the forward, reconnects from its cursor (to
    # another gateway): the stream that opens, its agent holding a conversation, reads the store first (an idle
    # stream opens again by itself after 15 s, and does the same).
    with sc.socket(agent, cursor=cursor) as again:
        shown = again.next("message", timeout=10)
        assert (shown["transaction_id"], shown["message"]["id"], shown["message"]["summary"]) == (
            tx_id, message_id, "are you there?")
        assert _events_showing(sc, agent, "are you there?") == 1


@pytest.mark.ray
def test_a_message_attached_but_never_shown_reaches_the_agent_when_its_inbox_activates(sc: Scenario) -> None:
    """Attached without its event (a store an earlier release wrote): the inbox's next activation hands it over,
    and the agent writes its event."""
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    with sc.socket(agent) as sock:
        tx_id = _held(sc, agent, sock, customer_id())
        message_id = _attached_but_never_told(sc, tx_id, "still waiting")
        # A crash: Ray restarts the inbox actor, which activates from the store.
        ray.kill(ray.get_actor(f"inbox:{sc.org.id}:{inbox}", namespace=sc.gateway.namespace), no_restart=False)
        shown = sock.next("message", timeout=30)
        assert (shown["transaction_id"], shown["message"]["id"]) == (tx_id, message_id)
        assert _events_showing(sc, agent, "still waiting") == 1


@pytest.mark.ray
def test_a_lost_forward_reaches_the_agent_even_when_a_later_follow_up_came_through(sc: Scenario) -> None:
    """The gateway died after storing one follow-up; the customer's next one was forwarded by its successor."""
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        customer = customer_id()
        tx_id = _held(sc, agent, sock, customer)
        lost = _stored_but_never_forwarded(sc, agent, tx_id, "first, never forwarded")
        sc.send(customer, "second, forwarded")
        # The agent, told of the second, reads the stream's events in order: the first comes first (long before
        # its stream would open again).
        first = sock.next("message", timeout=10)
        assert (first["transaction_id"], first["message"]["id"]) == (tx_id, lost)
        assert sock.next("message")["message"]["summary"] == "second, forwarded"
        assert _events_showing(sc, agent, "first, never forwarded") == 1


@pytest.mark.ray
def test_a_follow_up_stored_before_a_close_is_shown_before_it_and_one_after_opens_the_next(sc: Scenario) -> None:
    (agent,) = sc.agents(1, max_concurrent=2)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        customer = customer_id()
        tx_id = _held(sc, agent, sock, customer)
        message_id = _stored_but_never_forwarded(sc, agent, tx_id, "one more thing")
        sc.do(tx_id, "close", agent)
        shown = sock.next("message", timeout=20)
        closed = sock.next("transaction_closed")
        assert (shown["transaction_id"], shown["message"]["id"]) == (tx_id, message_id)
        assert closed["transaction_id"] == tx_id and shown["id"] < closed["id"]
        assert _attached_to(sc, "one more thing") == [(tx_id,)]
        sc.send(customer, "and another")
        offer = sock.next("offer")
        assert offer["transaction_id"] != tx_id and offer["first_message"]["summary"] == "and another"


@pytest.mark.ray
def test_a_conversation_claimed_after_a_long_wait_shows_its_agent_every_message_once(sc: Scenario) -> None:
    """More messages came while it waited than the assignment's read takes (200): the rest are handed over right
    after its commit, each shown once."""
    (agent,) = sc.agents(1)
    sc.inbox([agent], mode="manual")
    customer = customer_id()
    sc.send(customer, "first")
    tx_id = int(sc.tx_of(customer)["id"])
    query_db(sc.gateway, f"INSERT INTO inbound_messages (wamid, summary, {_COPIED}) WITH RECURSIVE n(i) AS "
                         "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250) "
                         f"SELECT 'wamid.wait.' || i || '.' || :tx, 'waited ' || i, {_COPIED} FROM n, inbound_messages "
                         "WHERE inbound_messages.transaction_id = :tx RETURNING id", tx=tx_id)
    with sc.socket(agent) as sock:
        sc.do(tx_id, "claim", agent)
        assert sock.next("assigned")["first_message"]["summary"] == "first"
        shown = [sock.next("message", timeout=30)["message"]["summary"] for _ in range(250)]
    assert sorted(shown) == sorted(f"waited {i}" for i in range(1, 251))
    ((events,),) = query_db(sc.gateway, "SELECT count(*) FROM agent_events WHERE user_id = :u AND kind = 'message'",
                            u=agent.id)
    assert events == 250
