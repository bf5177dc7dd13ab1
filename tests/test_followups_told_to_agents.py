"""A follow-up to a conversation an agent holds is shown on the agent's stream by the intake's commit, and the
gateway tells the agent directly: its inbox is not called for it (one actor call per follow-up instead of two).
One whose customer's identity the delivery changed still goes through the inbox, whose conversation then shows the
newest identity."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlalchemy import select

from gateway.intake import IntakeResult, store_delivery
from meta.simulator import payloads
from meta.webhook_parser import parse_webhook
from store.db import Database
from store.tables import Inbox
from tests.routing_support import Scenario, customer_id
from tests.support import eventually
from tests.test_close_while_delivering import _conversation, _store_url
from tests.test_followups_at_intake import _held
from tests.test_metrics_under_load import ray_metrics_url, scrape, value


def _text_from(number: str, sender: str, name: str, body: str) -> Any:
    return parse_webhook(payloads.inbound_message("waba", number, "15550001", sender, name, body=body))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_intake_leaves_a_follow_up_to_its_agent_unless_it_changed_the_customers_identity(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = _store_url(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        # Carla's conversation, held by the agent.
        org_id, user_id, inbox_id, customer, tx_id = await _conversation(db)
        async with db.session() as session:
            number = await session.scalar(select(Inbox.phone_number_id).where(Inbox.id == inbox_id))
        assert number is not None

        async def deliver(name: str, body: str) -> IntakeResult:
            async with db.session() as session:
                return await store_delivery(session, org_id, _text_from(number, "15550001111", name, body))

        # Her profile name changes: the follow-up goes to the inbox (its conversation shows the new name), which
        # tells the agent; the intake's commit showed it on the agent's stream all the same.
        renamed = await deliver("Carla Gómez", "one more thing")
        ((through_inbox,),) = renamed.new_messages.values()
        assert through_inbox.transaction_id == tx_id and through_inbox.customer_id == customer
        assert through_inbox.customer["name"] == "Carla Gómez"
        assert through_inbox.shown_as is not None and through_inbox.shown_as[0] == user_id
        assert renamed.agents_shown == set()
        # The next one, her identity as stored: for the agent only, told the event the commit stored.
        same = await deliver("Carla Gómez", "are you there?")
        assert same.new_messages == {}
        assert same.agents_shown == {(org_id, user_id)}
        ((_, _, kind, payload, _),) = same.told[user_id]
        assert (kind, payload["transaction_id"], payload["message"]["summary"]) == ("message", tx_id,
                                                                                   "are you there?")
        await db.dispose()

    asyncio.run(run())


@pytest.mark.ray
def test_a_follow_up_renaming_the_customer_reaches_the_agent_and_its_conversation_shows_the_new_name(
        sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    customer = customer_id()
    with sc.socket(agent) as sock:
        tx_id = _held(sc, agent, sock, customer, name="Dora")
        sc.send(customer, "it's me again", name="Dora")
        assert sock.next("message")["message"]["summary"] == "it's me again"
        sc.send(customer, "new name, same me", name="Dora Lima")
        shown = sock.next("message")["message"]
        assert (shown["summary"], shown["customer"]["name"]) == ("new name, same me", "Dora Lima")
        # The close answers with the conversation as its inbox holds it: the name the last follow-up brought.
        assert sc.do(tx_id, "close", agent)["customer"]["name"] == "Dora Lima"


@pytest.mark.ray
def test_follow_ups_told_to_their_agent_count_among_the_inboxs_routed_messages(sc: Scenario) -> None:
    """The inbox's `wa_router_inbox_messages_routed` counts every message of its conversations: the first one routed
    by the inbox, the follow-ups by the agent the gateway told of them."""
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    customer = customer_id()
    with sc.socket(agent) as sock:
        _held(sc, agent, sock, customer, name="Eva")
        for text in ("one", "two", "three"):
            sc.send(customer, text, name="Eva")
            assert sock.next("message")["message"]["summary"] == text
    nodes = {ray.get(ray.get_actor(name, namespace=sc.gateway.namespace).ping.remote(), timeout=20)["node_id"]
             for name in (f"inbox:{sc.org.id}:{inbox}", f"agent:{sc.org.id}:{agent.id}")}

    def routed() -> float | None:
        found = sum(value(scrape(ray_metrics_url(node)), "ray_wa_router_inbox_messages_routed_total",
                          organization=str(sc.org.id), inbox=str(inbox)) for node in nodes)
        return found if found >= 4 else None

    assert eventually(routed, timeout=40, interval=1, what="the inbox's routed messages on the node's export") == 4
