"""On the message path an agent writes nothing: the inbox's commits put the offer, the assignment (with its first
message), the messages it attaches and the close on the agent's stream, and the agent takes them as told: it neither
writes nor reads its stream.

Ray-free: a real inbox actor and a real agent actor in this process, on a real store (SQLite and PostgreSQL);
the agent's store counts the agent's own write transactions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from config.settings import Settings
from store.agent_store_steps import AgentStore, Step, StoredEvent
from store.db import Database
from store.tables import AgentEvent, AgentState, InboundMessage, Inbox, Transaction
from tests.test_close_while_delivering import (
    _Agents,
    _conversation,
    _crash,
    _first_of,
    _forwarded,
    _Inboxes,
    _message,
    _store_url,
)


class _CountingStore(AgentStore):
    """The agent's real store, counting the write transactions the agent itself runs, and its reads of its stream."""

    reads_from_any_loop = True

    def __init__(self, store: AgentStore) -> None:
        self._store = store
        self.writes = 0
        self.reads = 0

    async def _run(self, step: Step[Any], write: bool = False) -> Any:
        self.writes += write
        return await self._store.run(step, write)

    async def events_after(self, user_id: int, after_id: int, limit: int) -> list[StoredEvent]:
        self.reads += 1
        return await super().events_after(user_id, after_id, limit)

    async def close(self) -> None:
        await self._store.close()


async def _stream(db: Database, user_id: int) -> list[tuple[str, int | None, Any]]:
    """(kind, transaction id, message or first message id) of every event on the agent's stream, in order."""
    async with db.session() as session:
        rows = (await session.execute(select(AgentEvent.kind, AgentEvent.payload).where(AgentEvent.user_id == user_id)
                                      .order_by(AgentEvent.id))).all()
    return [(kind, payload.get("transaction_id"),
             (payload.get("message") or payload.get("first_message") or {}).get("id")) for kind, payload in rows]


def _routed_by(inbox_id: int, mode: str) -> Any:
    """A supervisor's change of the inbox's mode, as the configuration API writes it (the inbox is told after)."""
    return update(Inbox).where(Inbox.id == inbox_id).values(assignment_mode=mode,
                                                            config_version=Inbox.config_version + 1)


async def _until(check: Any, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not within 5 s: {what}")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_routed_conversation_costs_its_agent_no_write_from_offer_to_close(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A claimed conversation, then the customer's next one offered and accepted, each with a follow-up the inbox
    attaches, each closed: the agent shows all of it, in order, with no write of its own; its idle clock (Longest
    Idle) starts at the close the inbox committed."""
    from actors.agent_actor import AgentActor
    from store.agent_store import open_agent_store

    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, customer_id, claimed = await _conversation(db, mode="manual")
        first = await _first_of(db, claimed)
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        store = _CountingStore(open_agent_store(url, linger_s=0, name="agent"))
        actor._store = store
        inbox = InboxActor(org_id, inbox_id, settings, _Agents(actor))  # type: ignore[arg-type]
        try:
            await actor.view()
            await actor.set_status("available")  # the agent's own act: a write, before the message path
            writes = store.writes
            assert (await inbox.activate())["exists"]
            await asyncio.sleep(0.2)  # what the activation asks of its agents (a resync) is over
            reads = store.reads

            async def follow_up(tx_id: int) -> int:
                async with db.session() as session:
                    message = _message(org_id, inbox_id, customer_id, "one more thing", None)
                    session.add(message)
                assert (await inbox.ingest([_forwarded(message, None)]))["attached"] == 1
                await _until(lambda: (tx_id, message.id) in actor._delivered, "the follow-up shown")
                return int(message.id)

            assert (await inbox.claim(claimed, user_id))["status"] == 200
            assert claimed in actor.active
            one_more = await follow_up(claimed)
            assert (await inbox.close(claimed, user_id, False))["status"] == 200
            assert actor.active == {}
            # Its stream not read: the assignment, the follow-up and the close each came told as their commit stored
            # them.
            assert store.reads == reads

            # The inbox now routes by round robin; the customer writes again: a new conversation, offered.
            await db.write(lambda connection: connection.execute(_routed_by(inbox_id, "round_robin")))
            await inbox.config_changed()
            await asyncio.sleep(0.2)  # the agents asked to resync with the store (a read of the stream) have done so
            reads = store.reads
            async with db.session() as session:
                opening = _message(org_id, inbox_id, customer_id, "hello again", None)
                session.add(opening)
            # A new conversation: its message is attached by the routing pass's commit that opens and offers it.
            assert await inbox.ingest([_forwarded(opening, None)]) == {"attached": 0, "opening": 1}
            await _until(lambda: any(h.published for h in actor.holds.values()), "the offer shown")
            async with db.session() as session:
                routed = await session.scalar(select(InboundMessage.transaction_id)
                                              .where(InboundMessage.id == opening.id))
            assert routed is not None and routed != claimed
            assert (await inbox.accept(routed, user_id))["status"] == 200
            assert routed in actor.active and not actor.holds
            again = await follow_up(routed)
            assert (await inbox.close(routed, user_id, False))["status"] == 200
            assert actor.active == {}

            assert store.writes == writes  # nothing written by the agent on the message path
            assert store.reads == reads  # nor read: the offer, the assignment, the follow-up and the close came told
            assert [(kind, tx, shown) for kind, tx, shown in await _stream(db, user_id) if kind != "status"] == [
                ("assigned", claimed, first), ("message", claimed, one_more), ("transaction_closed", claimed, None),
                ("offer", routed, opening.id), ("assigned", routed, opening.id), ("message", routed, again),
                ("transaction_closed", routed, None)]
            async with db.session() as session:
                ended = await session.scalar(select(AgentState.last_chat_end_at).where(AgentState.user_id == user_id))
                closed_at = await session.scalar(select(Transaction.closed_at).where(Transaction.id == routed))
            assert ended is not None and ended == closed_at == actor.last_chat_end_at
        finally:
            await _crash(inbox)
            await store.close()
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("first", ["released", "published"])
def test_an_offer_the_inbox_showed_is_withdrawn_on_the_stream_whichever_of_its_end_and_its_publish_comes_first(
        tmp_path: Path, first: str, request: pytest.FixtureRequest) -> None:
    """The inbox's commit shows an offer on the agent's stream; the agent's hold ends (declined, missed, lapsed)
    before or after the inbox's publish reaches it. Either way the stream shows the offer withdrawn once: a
    workspace never rings for an offer that is over."""
    from actors.agent_actor import AgentActor
    from store import agent_streams
    from store.agent_store import open_agent_store
    from store.clock import utcnow

    url = _store_url("sqlite", tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key"))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db, mode="manual")
        actor = AgentActor(org_id, user_id, settings, _Inboxes())  # type: ignore[arg-type]
        actor._store = open_agent_store(url, linger_s=0, name="agent")
        offer = {"offer_id": f"{tx_id}.abc", "transaction_id": tx_id, "inbox_id": inbox_id,
                 "expires_at": utcnow().isoformat()}
        try:
            await actor.view()
            await actor.set_status("available")
            assert (await actor.hold(offer))["ok"]
            await db.write(lambda connection: agent_streams.append_to_streams(
                connection, org_id, [(user_id, "offer", offer)], utcnow()))  # the inbox's commit
            if first == "released":
                await actor.release(offer["offer_id"], "declined")
                await actor.publish(offer)  # late: the hold is over
            else:
                await actor.publish(offer)
                await actor.release(offer["offer_id"], "declined")
            await actor.publish(offer)  # a retry changes nothing
            shown = [(kind, tx) for kind, tx, _ in await _stream(db, user_id) if kind != "status"]
            assert shown == [("offer", tx_id), ("offer_rescinded", tx_id)]
            assert not actor.holds and actor.snapshot()["has_pending_offer"] is False
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())
