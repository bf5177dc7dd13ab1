"""An inbox's actor runs as soon as the inbox exists: its first customer never waits for a process to start."""

from __future__ import annotations

import pytest
import ray

from actors.names import inbox_actor_name
from tests.support import Gateway, org_with_waba


@pytest.mark.ray
def test_a_created_inbox_has_its_actor_running_when_the_answer_arrives(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=1)
    agent, _ = org.add_user(name="Ana")
    created = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                         json={"name": "Sales", "type": "whatsapp", "phone_number_id": org.numbers[0],
                               "agents": [{"user_id": agent}]})
    # Looked up at once, no waiting: the actor is already there and has loaded the inbox from the store.
    actor = ray.get_actor(inbox_actor_name(org.id, created["id"]), namespace=gateway.namespace)
    state = ray.get(actor.ping.remote(), timeout=10)
    assert state["inbox_id"] == created["id"] and state["activated"] is True
