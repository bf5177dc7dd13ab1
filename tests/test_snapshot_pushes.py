"""An agent tells its other inboxes of a change only when it may change what they route on, to offer.

Each push of an agent's snapshot to an inbox is an actor call. An inbox routes on whether the agent is present,
under capacity, holding an offer, busy and (when free) idle since when (`actors.agent_presence.routing_key`). An
inbox hears of a change that lets it offer where it would not have (the agent under capacity again, idle again,
no longer ringing) or of the agent's presence and capacity; not of one that only makes the agent less eligible,
which the inbox finds out from the answer to its next hold (`actors.agent_presence.must_hear`). Ray-free: a real
agent actor in this process, on a real store (SQLite and PostgreSQL), whose directory counts the snapshots each
inbox is pushed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete

from actors.agent_actor import AgentActor
from actors.agent_presence import must_hear, routing_key
from actors.inbox_actor import InboxActor
from config.actor_settings import ActorSettings
from config.settings import Settings
from routing import AssignmentMode, orders_by_idle
from store import agent_streams
from store.clock import utcnow
from store.db import Database
from store.tables import Inbox, InboxAgent, PhoneNumber
from tests.test_close_while_delivering import _conversation, _crash, _store_url

# An agent's snapshot as pushed (`actors.agent_core.AgentCore.snapshot`), in the few values routing tells apart.
snapshots = st.fixed_dictionaries({
    "status": st.sampled_from(["available", "away", "offline"]), "max_concurrent": st.integers(1, 3),
    "active_count": st.integers(0, 3), "has_pending_offer": st.booleans(),
    "idle_since": st.sampled_from([None, "2026-01-01T09:00:00+00:00", "2026-01-01T10:00:00+00:00"])})


def _may_offer(snapshot: dict[str, Any], *, idle_only: bool) -> bool:
    """Whether an inbox seeing this snapshot may plan an offer to the agent (`routing.model.AgentSnapshot`)."""
    return (snapshot["status"] == "available" and snapshot["active_count"] < snapshot["max_concurrent"]
            and not snapshot["has_pending_offer"] and not (idle_only and snapshot["active_count"] > 0))


@given(told=snapshots, now=snapshots)
def test_an_inbox_hears_of_every_change_that_lets_it_offer(told: dict[str, Any], now: dict[str, Any]) -> None:
    """Whatever an inbox last heard, a change after which it may offer where it could not, or after which Longest
    Idle orders the agent otherwise, is pushed; one it is not pushed only makes the agent less eligible, which a
    hold's answer shows. An inbox of another mode hears the same, except what only idle time decides."""
    for mode in AssignmentMode:
        idle_only = orders_by_idle(mode)
        heard = must_hear(routing_key(told), routing_key(now), idle_only)
        if _may_offer(now, idle_only=idle_only) and not _may_offer(told, idle_only=idle_only):
            assert heard
        if idle_only and _may_offer(now, idle_only=True) and now["idle_since"] != told["idle_since"]:
            assert heard  # Longest Idle's order
        if now["status"] != told["status"] or now["max_concurrent"] != told["max_concurrent"]:
            assert heard
        if not heard:
            # What the inbox may still plan on is at least what the agent now allows: its hold finds out the rest.
            assert _may_offer(told, idle_only=idle_only) or not _may_offer(now, idle_only=idle_only)
        if not idle_only and told["active_count"] > 0 and now["active_count"] == 0 \
                and (told["status"], told["max_concurrent"], told["has_pending_offer"]) == \
                (now["status"], now["max_concurrent"], now["has_pending_offer"]) \
                and told["active_count"] < told["max_concurrent"]:
            assert not heard  # free again, which only Longest Idle decides on


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


async def _agent_of_two_inboxes(db: Database, support_mode: str = "longest_idle") -> tuple[int, int, int, int]:
    """(org, agent, sales inbox, support inbox): one agent serving both (sales has a customer waiting, unrouted)."""
    org_id, user_id, sales, _, _ = await _conversation(db, mode="manual")
    async with db.session() as session:
        number = PhoneNumber(phone_number_id=uuid.uuid4().hex[:12], waba_id="waba")
        session.add(number)
        await session.flush()
        support = Inbox(org_id=org_id, name="Support", phone_number_id=number.phone_number_id,
                        assignment_mode=support_mode, reassign_after_s=30)
        session.add(support)
        await session.flush()
        session.add(InboxAgent(inbox_id=support.id, user_id=user_id, proficiency=1))
        return org_id, user_id, sales, support.id


async def _online(actor: AgentActor, inboxes: _CountingInboxes, watched: int, max_concurrent: int,
                  ) -> tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]:
    """The agent available with `max_concurrent`: (how many snapshots each inbox was pushed so far, what the watched
    inbox is pushed from then on)."""
    await actor.view()
    await actor.set_max_concurrent(max_concurrent)
    await actor.set_status("available")
    await asyncio.sleep(0.1)
    start = len(inboxes.pushed.get(watched, []))
    assert start >= 1  # presence and capacity: every inbox hears of them

    async def pushed_since() -> list[dict[str, Any]]:
        await asyncio.sleep(0.1)  # the pushes are told after the answer
        return inboxes.pushed.get(watched, [])[start:]

    return start, pushed_since


async def _take(db: Database, actor: AgentActor, org_id: int, user_id: int, inbox_id: int, tx_id: int) -> None:
    """The inbox's side of an offer the agent accepts: hold, the offer's commit, publish, the assignment's commit,
    confirm."""
    offer: dict[str, Any] = {"offer_id": f"{tx_id}.1", "transaction_id": tx_id, "inbox_id": inbox_id,
                             "expires_at": None}
    assert (await actor.hold(offer))["ok"]
    now = utcnow()
    told = await db.write(lambda connection: agent_streams.append_to_streams(
        connection, org_id, [(user_id, "offer", offer)], now))
    await actor.publish(offer, told[user_id])
    summary = {"transaction_id": tx_id, "inbox_id": inbox_id, "first_message": {"id": tx_id}}
    await db.write(lambda connection: agent_streams.append_to_streams(
        connection, org_id, [agent_streams.work_started(user_id, "accepted", summary, offer["offer_id"])], now))
    await actor.confirm(offer["offer_id"], {**summary, "kind": "accepted"})


async def _close(db: Database, actor: AgentActor, org_id: int, user_id: int, inbox_id: int, tx_id: int) -> None:
    """The inbox's side of a close: its commit, then end."""
    now = utcnow()
    told = await db.write(lambda connection: agent_streams.work_left(
        connection, org_id, user_id, tx_id, inbox_id, "closed", now))
    await actor.end(tx_id, "closed", now.isoformat(), told[user_id])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_inbox_that_does_not_order_by_idle_time_is_not_told_an_agent_is_free_again(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """The agent reads its inboxes' modes with the inboxes it serves. Its round-robin support inbox, which decides
    on presence, capacity and ringing alone, hears of none of a chat in sales: not the chat taken on, not the agent
    free again with its idle clock restarted; it does hear when the agent, full, frees a place."""
    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    agent_store_actors=0))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, sales, support = await _agent_of_two_inboxes(db, support_mode="round_robin")
        inboxes = _CountingInboxes()
        actor = AgentActor(org_id, user_id, settings, inboxes)  # type: ignore[arg-type]
        try:
            _, pushes_to_support = await _online(actor, inboxes, support, max_concurrent=2)
            assert await actor.store.served_inboxes(user_id) == {sales: "manual", support: "round_robin"}
            await _take(db, actor, org_id, user_id, sales, 201)
            await _close(db, actor, org_id, user_id, sales, 201)
            assert await pushes_to_support() == []
            assert actor.snapshot()["idle_since"] == actor.last_chat_end_at.isoformat()  # type: ignore[union-attr]

            # Full, support's hold is refused (its answer tells support so); a place freed is pushed.
            await _take(db, actor, org_id, user_id, sales, 202)
            await _take(db, actor, org_id, user_id, sales, 203)
            refused = await actor.hold({"offer_id": "900.1", "transaction_id": 900, "inbox_id": support,
                                        "expires_at": None})
            assert not refused["ok"] and "capacity" in refused["reason"]
            await _close(db, actor, org_id, user_id, sales, 203)
            pushed = await pushes_to_support()
            assert len(pushed) == 1 and pushed[-1]["active_count"] == 1 < pushed[-1]["max_concurrent"]
            await _close(db, actor, org_id, user_id, sales, 202)
            assert len(await pushes_to_support()) == 1  # free again: nothing support decides on
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_agent_pushes_its_other_inbox_only_the_changes_that_inbox_routes_on(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Sales offers the agent (capacity 3) three conversations one after the other, and the agent closes them: the
    support inbox hears only when the agent is free again (with its idle clock), and the push routes as the agent
    then is. Once support's own hold was refused at capacity, it hears when a chat ends. After an answer to an
    inbox it cannot name, the agent assumes nothing of what its inboxes know."""
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
            start, pushes_to_support = await _online(actor, inboxes, support, max_concurrent=3)

            async def take(tx_id: int) -> None:
                await _take(db, actor, org_id, user_id, sales, tx_id)

            async def close(tx_id: int) -> None:
                await _close(db, actor, org_id, user_id, sales, tx_id)

            shapes = []
            for tx_id in (101, 102, 103):
                await take(tx_id)
                shapes.append(len(await pushes_to_support()))
            for tx_id in (103, 102, 101):
                await close(tx_id)
                shapes.append(len(await pushes_to_support()))
            # Busy, one more chat, full: support is not told (its hold would find out). Not full, one chat less:
            # still busy, nothing support could offer on. Free again, idle since its last chat ended: told.
            assert shapes == [0, 0, 0, 0, 0, 1]
            pushed = await pushes_to_support()
            assert routing_key(pushed[-1]) == routing_key(actor.snapshot())
            assert pushed[-1]["active_count"] == 0
            assert pushed[-1]["idle_since"] == actor.last_chat_end_at.isoformat()  # type: ignore[union-attr]
            # The inbox that made each change learned it from the agent's answers, not from pushes.
            assert len(inboxes.pushed.get(sales, [])) == start

            # Support learns from its own hold's answer that the agent is full; when a chat ends, it is told.
            for tx_id in (104, 105, 106):
                await take(tx_id)
            refused = await actor.hold({"offer_id": "900.1", "transaction_id": 900, "inbox_id": support,
                                        "expires_at": None})
            assert not refused["ok"] and "capacity" in refused["reason"]
            assert len(await pushes_to_support()) == 1
            await close(106)
            pushed = await pushes_to_support()
            assert len(pushed) == 2 and pushed[-1]["active_count"] == 2 < pushed[-1]["max_concurrent"]

            # An answer to an inbox the agent cannot name (a retried release of an offer it no longer holds): what
            # every inbox knows is no longer assumed, and the next change, though it only makes the agent less
            # eligible, is pushed (the hold), and so is the confirm (no longer ringing; a push not yet sent is
            # replaced by the newer one).
            await actor.release("104.0", "rescinded")
            await take(107)
            pushed = await pushes_to_support()
            assert len(pushed) in (3, 4) and pushed[-1]["active_count"] == 3
            assert len(inboxes.pushed.get(sales, [])) == start
        finally:
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())


class _SupportIsReal:
    """The agent's directory: sales counts what it is pushed (`_CountingInboxes`); support is a real inbox actor in
    this process, whose answers to the agent's pushes are counted; the inbox's directory is the agent itself."""

    def __init__(self, counting: _CountingInboxes, support_id: int) -> None:
        self.counting, self.support_id = counting, support_id
        self.support: InboxActor | None = None
        self.agent_actor: AgentActor | None = None
        self.support_answers: list[Any] = []

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        if inbox_id != self.support_id:
            return self.counting.inbox(org_id, inbox_id)
        outer = self

        class _Support:
            async def agent_changed(self, snapshot: dict[str, Any]) -> Any:
                assert outer.support is not None
                answer = await outer.support.agent_changed(snapshot)
                outer.support_answers.append(answer)
                return answer

        return _Support()

    def agent(self, org_id: int, user_id: int) -> Any:
        return self.agent_actor


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_agent_removed_from_an_inbox_stops_telling_it_after_the_inbox_answers_that_it_left(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """The agent keeps the inboxes it serves for long (no store read per push). Removed from the Longest Idle
    support inbox, its next push there is answered "not a member": it reads its inboxes again, and support hears
    nothing more of its chats in sales."""
    url = _store_url(backend, tmp_path, request)
    settings = ActorSettings.from_settings(Settings(database_url=url, secret_key_file=tmp_path / "secret.key",
                                                    agent_store_actors=0, inbox_sync_interval_s=3600))

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, user_id, sales, support = await _agent_of_two_inboxes(db)
        directory = _SupportIsReal(_CountingInboxes(), support)
        actor = AgentActor(org_id, user_id, settings, directory)  # type: ignore[arg-type]
        directory.agent_actor = actor
        inbox = InboxActor(org_id, support, settings, directory)  # type: ignore[arg-type]
        directory.support = inbox
        try:
            assert (await inbox.activate())["exists"]
            await actor.view()
            await actor.set_status("available")
            await asyncio.sleep(0.1)
            assert directory.support_answers and all(a is True for a in directory.support_answers)

            async with db.session() as session:
                await session.execute(delete(InboxAgent).where(InboxAgent.inbox_id == support,
                                                               InboxAgent.user_id == user_id))
            await inbox.config_changed()  # what the gateway's route tells the inbox
            answered = len(directory.support_answers)

            await _take(db, actor, org_id, user_id, sales, 301)
            await _close(db, actor, org_id, user_id, sales, 301)
            await asyncio.sleep(0.1)
            assert directory.support_answers[answered:] == [False]  # idle again: told, and answered "left"

            await _take(db, actor, org_id, user_id, sales, 302)
            await _close(db, actor, org_id, user_id, sales, 302)
            await asyncio.sleep(0.1)
            assert directory.support_answers[answered:] == [False]  # read again: support is no longer told
            assert actor._inboxes is not None and actor._inboxes[0] == {sales: "manual"}
        finally:
            await _crash(inbox)
            await actor.store.close()
            await db.dispose()

    asyncio.run(run())
