"""An agent tells its other inboxes of a change only when it changes what they route on.

Each push of an agent's snapshot to an inbox is an actor call. An inbox routes on whether the agent is present,
under capacity, holding an offer, busy and (when free) idle since when (`actors.agent_presence.routing_key`): a
busy agent taking one more chat under capacity, or ending one of several, changes none of it for its other
inboxes. Ray-free: a real agent actor in this process, on a real store (SQLite and PostgreSQL), whose directory
counts the snapshots each inbox is pushed.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors.agent_actor import AgentActor
from actors.agent_presence import routing_key
from config.actor_settings import ActorSettings
from config.settings import Settings
from store import agent_streams
from store.clock import utcnow
from store.db import Database
from store.tables import Inbox, InboxAgent, PhoneNumber
from tests.test_close_while_delivering import _conversation, _store_url


class _CountingInboxes:
    """The agent's directory: every inbox answers at once and keeps each snapshot pushed to it."""

    def __init__(self) -> None:
        self.pushed: dict[int, list[dict[str, Any]]] = {}

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        pushed = self.pushed.setdefault(inbox_id, [])

        class _Inbox:
            async def agent_changed(self, snapshot: dict[str, Any]) -> None:
                pushed.append(snapshot)

        return _Inbox()


async def _agent_of_two_inboxes(db: Database) -> tuple[int, int, int, int]:
    """(org, agent, sales inbox, support inbox): one agent serving both (sales has a customer waiting, unrouted)."""
    org_id, user_id, sales, _, _ = await _conversation(db, mode="manual")
    async with db.session() as session:
        number = PhoneNumber(phone_number_id=uuid.uuid4().hex[:12], waba_id="waba")
        session.add(number)
        await session.flush()
        support = Inbox(org_id=org_id, name="Support", phone_number_id=number.phone_number_id,
                        assignment_mode="longest_idle", reassign_after_s=30)
        session.add(support)
        await session.flush()
        session.add(InboxAgent(inbox_id=support.id, user_id=user_id, proficiency=1))
        return org_id, user_id, sales, support.id


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_agent_pushes_its_other_inbox_only_the_changes_that_inbox_routes_on(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Sales offers the agent (capacity 3) three conversations one after the other, and the agent closes them: the
    support inbox hears when the agent becomes busy, full, no longer full, and free (with its idle clock), and
    nothing of the chats taken or closed in between; each push it gets routes as the agent then is. After an
    answer to an inbox it cannot name, the agent assumes nothing of what its inboxes know."""
    url = _store_url(backend, tmp_path, request)
    # On PostgreSQL the agent runs its store steps itself (no shared store actors: no Ray here).
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    agent_store_actors=0))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, sales, support = await _agent_of_two_inboxes(db)
        inboxes = _CountingInboxes()
        actor = AgentActor(org_id, user_id, settings, inboxes)  # type: ignore[arg-type]
        try:
            await actor.view()
            await actor.set_max_concurrent(3)
            await actor.set_status("available")
            await asyncio.sleep(0.1)
            start = len(inboxes.pushed.get(support, []))
            assert start >= 1  # presence and capacity: every inbox hears of them

            async def pushes_to_support() -> list[dict[str, Any]]:
                await asyncio.sleep(0.1)  # the pushes are told after the answer
                return inboxes.pushed.get(support, [])[start:]

            async def take(tx_id: int) -> None:
                offer = {"offer_id": f"{tx_id}.1", "transaction_id": tx_id, "inbox_id": sales,
                         "expires_at": None}
                assert (await actor.hold(offer))["ok"]
                now = utcnow()
                told = await db.write(lambda connection: agent_streams.append_to_streams(
                    connection, org_id, [(user_id, "offer", offer)], now))
                await actor.publish(offer, told[user_id])
                summary = {"transaction_id": tx_id, "inbox_id": sales, "first_message": {"id": tx_id}}
                await db.write(lambda connection: agent_streams.append_to_streams(
                    connection, org_id, [agent_streams.work_started(user_id, "accepted", summary, offer["offer_id"])],
                    now))
                await actor.confirm(offer["offer_id"], {**summary, "kind": "accepted"})

            async def close(tx_id: int) -> None:
                now = utcnow()
                told = await db.write(lambda connection: agent_streams.work_left(
                    connection, org_id, user_id, tx_id, sales, "closed", now))
                await actor.end(tx_id, "closed", now.isoformat(), told[user_id])

            shapes = []
            for tx_id in (101, 102, 103):
                await take(tx_id)
                shapes.append(len(await pushes_to_support()))
            for tx_id in (103, 102, 101):
                await close(tx_id)
                shapes.append(len(await pushes_to_support()))
            # Busy (1 of 3), nothing, full (3 of 3); not full, nothing, free again.
            assert shapes == [1, 1, 2, 3, 3, 4]
            pushed = await pushes_to_support()
            assert [(p["active_count"] > 0, p["active_count"] >= p["max_concurrent"]) for p in pushed] == [
                (True, False), (True, True), (True, False), (False, False)]
            # The last one routes as the agent now is: free, idle since its last chat ended.
            assert routing_key(pushed[-1]) == routing_key(actor.snapshot())
            assert pushed[-1]["idle_since"] == actor.last_chat_end_at.isoformat()  # type: ignore[union-attr]
            # The inbox that made each change learned it from the agent's answers, not from pushes.
            assert len(inboxes.pushed.get(sales, [])) == start

            # An answer to an inbox the agent cannot name (a retried release of an offer it no longer holds): what
            # every inbox knows is no longer assumed, and the next change, though it changes no routing, is pushed.
            await take(104)
            assert len(await pushes_to_support()) == 5  # busy again
            await actor.release("104.0", "rescinded")
            await take(105)
            pushed = await pushes_to_support()
            assert len(pushed) == 6 and pushed[-1]["active_count"] == 2
            assert len(inboxes.pushed.get(sales, [])) == start
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())
