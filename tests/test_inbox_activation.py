"""An inbox's actor runs as soon as the inbox exists: its first customer never waits for a process to start."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

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


def test_creating_an_inbox_waits_for_its_actor_only_so_long(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A cluster too busy to start the actor in time: the inbox is created all the same (its first message, or the
    gateway's sweep, finds the actor once it runs), and the operator's log says so."""
    from actors import routing_client

    class StartingInbox:
        async def activate(self) -> None:
            await asyncio.sleep(3600)  # a process that does not come up

    class Directory:
        def inbox(self, org_id: int, inbox_id: int) -> StartingInbox:
            return StartingInbox()

    monkeypatch.setattr(routing_client, "_ACTIVATION_AT_CREATION_S", 0.2)
    client = routing_client.RoutingClient(cast(Any, Directory()), cast(Any, None))
    began = time.monotonic()
    asyncio.run(client.inbox_created(3, 7))
    assert time.monotonic() - began < 5
    assert "inbox 3:7 not activated at creation" in caplog.text
