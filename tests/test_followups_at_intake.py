"""A follow-up to a conversation an agent holds is attached in the commit that stores it (its inbox writes
nothing for it) and reaches the agent, even when the gateway dies before forwarding it; one that comes in as
the conversation closes opens the customer's next conversation."""

from __future__ import annotations

import pytest

from store.tables import InboundMessage
from tests.routing_support import Agent, AgentSocket, Scenario, customer_id, scenario
from tests.support import Gateway, query_db

_COPIED = ", ".join(c.name for c in InboundMessage.__table__.columns if c.name not in ("id", "wamid", "summary"))


def _stored_but_never_forwarded(sc: Scenario, tx_id: int, text: str) -> int:
    """A follow-up the gateway attached and committed, then died before forwarding (a copy of the first message)."""
    ((message_id,),) = query_db(
        sc.gateway, f"INSERT INTO inbound_messages (wamid, summary, {_COPIED}) SELECT :wamid, :text, {_COPIED} "
        "FROM inbound_messages WHERE transaction_id = :tx ORDER BY id LIMIT 1 RETURNING id",
        wamid=f"wamid.lost.{customer_id()}", text=text, tx=tx_id)
    return int(message_id)


def _held(sc: Scenario, agent: Agent, sock: AgentSocket, customer: str) -> int:
    """The customer's first message offered to the agent, who accepts it: the conversation's id."""
    sc.send(customer, "hello")
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
            # Attached by the time Meta got its 200: no inbox step in between.
            assert _attached_to(sc, text) == [(tx_id,)]
            assert sock.next("message")["message"]["summary"] == text


@pytest.mark.ray
def test_a_follow_up_whose_forward_was_lost_reaches_the_agent(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        tx_id = _held(sc, agent, sock, customer_id())
        message_id = _stored_but_never_forwarded(sc, tx_id, "are you there?")
        # The inbox's control loop finds it (every 2 s) and hands it over.
        shown = sock.next("message", timeout=20)
        assert (shown["transaction_id"], shown["message"]["id"], shown["message"]["summary"]) == (
            tx_id, message_id, "are you there?")


@pytest.mark.ray
def test_a_lost_forward_reaches_the_agent_even_when_a_later_follow_up_came_through(sc: Scenario) -> None:
    """The gateway died after storing one follow-up; the customer's next one was forwarded by its successor."""
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        customer = customer_id()
        tx_id = _held(sc, agent, sock, customer)
        lost = _stored_but_never_forwarded(sc, tx_id, "first, never forwarded")
        sc.send(customer, "second, forwarded")
        assert sock.next("message")["message"]["summary"] == "second, forwarded"
        shown = sock.next("message", timeout=20, where=lambda e: e["message"]["id"] == lost)
        assert shown["transaction_id"] == tx_id


@pytest.mark.ray
def test_a_follow_up_that_comes_in_as_the_conversation_closes_is_never_lost(sc: Scenario) -> None:
    """Either its agent was shown it before the close, or the close hands it back and it opens the customer's
    next conversation, offered like any first message."""
    (agent,) = sc.agents(1, max_concurrent=2)
    sc.inbox([agent])
    with sc.socket(agent) as sock:
        tx_id = _held(sc, agent, sock, customer_id())
        message_id = _stored_but_never_forwarded(sc, tx_id, "one more thing")
        sc.do(tx_id, "close", agent)
        shown = [e for e in sock.events if e["type"] == "message" and e["message"]["id"] == message_id]
        if shown:  # the control loop handed it over just before the close (rare)
            assert _attached_to(sc, "one more thing") == [(tx_id,)]
            return
        offer = sock.next("offer")
        assert offer["transaction_id"] != tx_id and offer["first_message"]["id"] == message_id
        assert _attached_to(sc, "one more thing") == [(offer["transaction_id"],)]
