"""Agent actors deactivate after a configurable time offline with no work (issue 7): each is a process
(~50 MiB), so an absent agent gives it back, and the next call activates it again from the store.

The shared test deployment keeps the default (300 s); these tests replace one agent's actor with one
whose settings say 1 s, as a deployment with `WA_ROUTER_AGENT_DEACTIVATE_AFTER_S=1` would create it.
"""

from __future__ import annotations

import time

import pytest
import ray

from actors.names import agent_actor_name
from actors.ray_directory import RayDirectory
from config.settings import Settings
from tests.routing_support import Agent, Scenario, customer_id
from tests.support import eventually


def quick_to_deactivate(sc: Scenario, agent: Agent) -> str:
    """Restart the agent's actor with a 1-second deactivation period; returns its Ray actor id."""
    name = agent_actor_name(sc.org.id, agent.id)
    ray.kill(ray.get_actor(name, namespace=sc.gateway.namespace), no_restart=True)
    eventually(lambda: not alive(sc, agent), what="the old actor gone")
    settings = Settings(database_url=sc.gateway.database_url, ray_namespace=sc.gateway.namespace,
                        agent_deactivate_after_s=1.0)
    RayDirectory(settings).agent(sc.org.id, agent.id)
    handle = ray.get_actor(name, namespace=sc.gateway.namespace)
    # Through the gateway: it drops its handle of the killed actor and finds the new one.
    assert sc.agent_view(agent)["user_id"] == agent.id
    return str(handle._actor_id.hex())


def alive(sc: Scenario, agent: Agent) -> str | None:
    try:
        return str(ray.get_actor(agent_actor_name(sc.org.id, agent.id), namespace=sc.gateway.namespace)
                   ._actor_id.hex())
    except ValueError:
        return None


def test_an_offline_agent_without_work_deactivates_and_the_next_call_brings_it_back(sc: Scenario) -> None:
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b], reassign_after_s=30)
    sc.status(b, "offline")
    quick_to_deactivate(sc, b)
    eventually(lambda: alive(sc, b) is None, timeout=20, what="the offline agent's actor deactivated")

    # Nothing was lost with the process: the next call activates the agent from the store.
    assert sc.agent_view(b)["status"] == "offline"
    assert sc.status(b, "available")["status"] == "available"
    sc.status(a, "offline")
    customer = customer_id()
    sc.send(customer)
    tx_id = sc.tx_of(customer)["id"]
    sc.wait_state(tx_id, "offered", offered_to=b.id)
    assert sc.do(tx_id, "accept", b)["agent_id"] == b.id
    assert sc.agent_view(b)["active_transactions"] == [tx_id]
    assert sc.queue(inbox) == []


@pytest.mark.parametrize("situation", ["available", "offline with an open chat", "offline with its stream open"])
def test_an_agent_with_work_presence_or_a_reader_keeps_its_actor(sc: Scenario, situation: str) -> None:
    (a,) = sc.agents(1)
    sc.inbox([a], reassign_after_s=30)
    tx_id = None
    if situation == "offline with an open chat":
        customer = customer_id()
        sc.send(customer)
        tx_id = sc.tx_of(customer)["id"]
        sc.wait_state(tx_id, "offered", offered_to=a.id)
        sc.do(tx_id, "accept", a)
    if situation != "available":
        sc.status(a, "offline")
    actor_id = quick_to_deactivate(sc, a)
    if situation == "offline with its stream open":
        with sc.socket(a):
            time.sleep(4)
            assert alive(sc, a) == actor_id
        # The gateway cancels the stream when the socket closes (a stream left open would keep the
        # actor for its quiet spell, a minute for an agent without conversations), so the offline agent goes
        # within a few periods.
        eventually(lambda: alive(sc, a) is None, timeout=8, what="the actor deactivated once its reader left")
        return
    time.sleep(4)  # four deactivation periods
    assert alive(sc, a) == actor_id
    if tx_id is not None:
        assert sc.agent_view(a)["active_transactions"] == [tx_id]
