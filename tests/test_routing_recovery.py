"""Actors crash; state survives in the store: timers re-arm, offers and messages are not lost."""

from __future__ import annotations

from typing import Any

import ray

from tests.routing_support import Agent, AgentSocket, Event, Scenario, customer_id
from tests.support import eventually


def _crash(sc: Scenario, name: str, *, restart: bool) -> None:
    # ray.kill without no_restart behaves like a process crash: Ray restarts the actor (max_restarts=-1).
    ray.kill(ray.get_actor(name, namespace=sc.gateway.namespace), no_restart=not restart)


def test_restarted_inbox_rearms_the_offer_timer_from_the_stored_deadline(sc: Scenario) -> None:
    first, second = sc.agents(2)
    inbox = sc.inbox([first, second], reassign_after_s=2)
    customer = customer_id()
    sc.send(customer, "my parcel is lost")
    tx_id = sc.tx_of(customer)["id"]
    sc.wait_state(tx_id, "offered", offered_to=first.id)
    _crash(sc, f"inbox:{sc.org.id}:{inbox}", restart=True)
    # Nobody calls the inbox: the restarted actor activates itself and its timer fires on time.
    sc.wait_state(tx_id, "offered", offered_to=second.id)
    assert ("missed", first.id) in sc.kinds(tx_id)
    assert sc.do(tx_id, "accept", second)["agent_id"] == second.id


def test_restarted_agent_still_holds_its_offer_and_replays_its_stream(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent], reassign_after_s=60)
    with sc.socket(agent) as socket:
        customer = customer_id()
        sc.send(customer, "hello after crash")
        offer = socket.next("offer")
        cursor_before = offer["id"] - 1
    _crash(sc, f"agent:{sc.org.id}:{agent.id}", restart=True)
    # The pending offer is rebuilt from what the inbox stored; accepting works after the restart.
    def restarted_view() -> dict[str, Any] | None:
        # While Ray restarts the actor the API answers 503 "retry shortly": a client retries.
        response = sc.gateway.call("GET", sc.org.path(f"/agents/{agent.id}"), sc.owner)
        if response.status_code == 503:
            return None
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view if view["pending_offer"] else None

    view = eventually(restarted_view, timeout=45, what="offer after restart")
    assert view["pending_offer"]["transaction_id"] == offer["transaction_id"]
    assert sc.do(offer["transaction_id"], "accept", agent)["state"] == "assigned"
    # A reconnecting workspace gets what it missed from the stored stream, in order.
    with sc.socket(agent, cursor=cursor_before) as replay:
        assert replay.next("offer")["transaction_id"] == offer["transaction_id"]
        assert replay.next("assigned")["transaction_id"] == offer["transaction_id"]


def _an_agent_ringing(sc: Scenario) -> tuple[Agent, AgentSocket, Event]:
    """The one agent of an inbox, their workspace open and showing a customer's offer."""
    (agent,) = sc.agents(1)
    sc.inbox([agent], reassign_after_s=60)
    socket = sc.socket(agent)
    sc.send(customer_id(), "hello")
    return agent, socket, socket.next("offer")


def test_a_workspace_opened_while_its_agents_actor_restarts_gets_its_hello_once_it_is_back(sc: Scenario) -> None:
    """The handshake waits out the restart (as the API's calls do) instead of closing the socket at once."""
    agent, first, offer = _an_agent_ringing(sc)
    first.close()
    _crash(sc, f"agent:{sc.org.id}:{agent.id}", restart=True)
    with sc.socket(agent, cursor=offer["id"] - 1) as reopened:
        assert reopened.hello["agent"]["user_id"] == agent.id
        assert reopened.next("offer")["transaction_id"] == offer["transaction_id"]


def test_messages_stored_while_an_inbox_actor_is_gone_are_routed_when_it_returns(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent], reassign_after_s=60)
    warm = customer_id()
    sc.send(warm, "first")
    sc.wait_state(sc.tx_of(warm)["id"], "offered", offered_to=agent.id)
    # Killed for good: the gateway's cached handle is dead. The next delivery must still be routed.
    _crash(sc, f"inbox:{sc.org.id}:{inbox}", restart=False)
    late = customer_id()
    sc.send(late, "sent while the inbox actor was gone")
    tx = sc.tx_of(late)
    assert tx["inbox_id"] == inbox
    assert [m["summary"] for m in sc.tx(tx["id"])["messages"]] == ["sent while the inbox actor was gone"]


def test_a_workspace_left_open_while_its_agents_actor_restarts_goes_on_receiving_events(sc: Scenario) -> None:
    """The socket outlives the restart: its stream is opened again from its cursor on the restarted actor."""
    agent, socket, first = _an_agent_ringing(sc)
    with socket:
        _crash(sc, f"agent:{sc.org.id}:{agent.id}", restart=True)
        assert sc.do(first["transaction_id"], "accept", agent)["state"] == "assigned"
        assert socket.next("assigned")["transaction_id"] == first["transaction_id"]
        assert socket.error is None
