"""The agent actor's core: its state, activation from the store, the snapshot inboxes route on, and the event log
every step commits through (`_commit`; `_absorb`, `_catch_up` and `_landed` around it).

The behaviour around it lives beside it, each in its own module: `actors.agent_offers` (offers and assignments,
and the holds that lapse by themselves), `actors.agent_presence` (status, capacity, telling the inboxes, idle
deactivation) and `actors.agent_stream` (the event stream's readers); `actors.agent_actor` composes them into
the deployed class.

Every step runs in the default concurrency group, under one lock: decide, commit one store transaction (state
and events together), then change memory, then tell the inboxes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from datetime import datetime
from typing import Any

import ray

from actors.activation import StoreBackedActor, in_ray_actor
from actors.agent_holds import Hold, stored_offer
from actors.directory import Directory
from actors.event_signal import EventSignal
from actors.mailbox import Mailbox
from config.actor_settings import ActorSettings
from store.agent_store import is_postgres, open_agent_store
from store.agent_store_steps import AgentStore, LinkedEvent, StoredEvent, told_rows
from store.clock import utcnow
from store.errors import StoreUnavailable

log = logging.getLogger("actors.agent_actor")

# Events kept in memory for live subscribers; older cursors are served from the store.
RECENT_EVENTS = 200
# How long a commit whose answer was lost waits for the store to tell whether it landed.
OUTCOME_WAIT_S = 10.0
# The events that open or end an agent's work, and how many of them a reload reads to know what the
# stream has shown as open.
WORK_EVENTS = ("assigned", "transferred", "transaction_closed")
STREAM_WORK_HISTORY = 1000
# Offer ids and message ids already dealt with, so a retried call does not act twice.
REMEMBERED_IDS = 5000
# Events read at once when catching up with what the gateway appended to the stream.
CATCH_UP_PAGE = 500
# Events read to find whether a commit whose answer was lost landed.
LANDED_READ_LIMIT = 1000


def remember(ids: OrderedDict[Any, None], key: Any) -> None:
    ids[key] = None
    while len(ids) > REMEMBERED_IDS:
        ids.popitem(last=False)


def _event(event_id: int, kind: str, at: datetime, payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "at": at.isoformat(), **payload}


def event_of(row: StoredEvent) -> dict[str, Any]:
    return _event(row.id, row.kind, row.created_at, row.payload)


class AgentCore(StoreBackedActor):
    """The agent's state and the plumbing of its steps: every part of `AgentActor` stands on it."""

    def __init__(self, org_id: int, user_id: int, settings: ActorSettings, directory: Directory | None = None) -> None:
        super().__init__(org_id, settings, directory)
        self.user_id = user_id
        self._step_lock = asyncio.Lock()
        self._signal = EventSignal()
        self._store: AgentStore | None = None
        self._stream_store: AgentStore | None = None
        self._mailboxes: dict[int, Mailbox] = {}
        self._notifying: asyncio.Task[None] | None = None
        self._retirement: asyncio.Task[None] | None = None
        self._heap_release: asyncio.Task[None] | None = None
        self._last_call = time.monotonic()
        self._last_step = time.monotonic()
        # ({inbox id: assignment mode}, read at): the inboxes snapshots are pushed to, cached (`_served_inboxes`).
        self._inboxes: tuple[dict[int, str], float] | None = None
        self._reset()

    def _reset(self) -> None:
        for timer in getattr(self, "_lapse_timers", {}).values():
            timer.cancel()
        self._user_exists = False
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        # The newest event id known when `_recent` is empty (a stream with no event yet).
        self._known_id = 0
        self.status = "offline"
        self.status_reason: str | None = None
        self.max_concurrent = 1
        self.available_since: datetime | None = None
        self.last_chat_end_at: datetime | None = None
        self.missed_in_a_row = 0
        self.epoch = 0
        self._seq = 0
        self.holds: dict[str, Hold] = {}
        self.active: dict[int, int] = {}
        # Transactions the event stream has shown as open (assigned, not yet closed or transferred away).
        self._shown_open: dict[int, int] = {}
        self._finished_offers: OrderedDict[str, None] = OrderedDict()
        # Offers this process confirmed: a retried confirm (its answer was slow) is answered without a second step.
        self._confirmed: OrderedDict[str, None] = OrderedDict()
        # (transaction id, message id) the stream showed: a message a close handed to the customer's next
        # conversation is shown there too.
        self._delivered: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._lapse_timers: dict[str, asyncio.Task[None]] = {}
        # inbox id -> the routing key (`routing_key`) of the newest snapshot it was given, in an answer or a push:
        # a change that leaves it as it is need not be pushed there. Unknown (empty) after a reload.
        self._told_keys: dict[int, tuple[Any, ...]] = {}

    def _exists(self) -> bool:
        return self._user_exists

    def _open_store(self) -> None:
        # Agents are many and mostly idle: their store is plain SQL on the driver, without SQLAlchemy (~26 MiB
        # per process). On PostgreSQL their steps run in the shared store actors, so the server's connections
        # do not grow with the agents (`actors/agent_store_actor.py`); without those, an agent holds a
        # connection only while stepping and `agent_connection_linger_s` after.
        if self._store is None:
            settings = self._settings
            if is_postgres(settings.database_url) and settings.agent_store_actors > 0:
                from actors.agent_store_actor import RemoteAgentStore

                index = self.user_id % settings.agent_store_actors
                self._store = RemoteAgentStore(lambda: self.directory.agent_store(index))
            else:
                self._store = open_agent_store(settings.database_url, linger_s=settings.agent_connection_linger_s,
                                               name=f"wa-router agent {self.user_id}")

    @property
    def store(self) -> AgentStore:
        assert self._store is not None, "AgentActor used before activation"
        return self._store

    async def _load(self) -> None:
        loaded = await self.store.load(self.org_id, self.user_id, recent=RECENT_EVENTS, work_kinds=WORK_EVENTS,
                                       work_history=STREAM_WORK_HISTORY, delivered_history=REMEMBERED_IDS)
        if loaded is None:
            return
        state, active, offers = loaded.state, loaded.active, loaded.offers
        recent, work_events = loaded.recent, loaded.work_events
        # Committed (the epoch is taken): memory follows.
        self._user_exists = True
        self.status = state.status
        self.status_reason = state.status_reason
        self.max_concurrent = state.max_concurrent
        self.available_since = state.available_since
        self.last_chat_end_at = state.last_chat_end_at
        self.missed_in_a_row = state.missed_in_a_row
        self.epoch = state.epoch
        self.active = active
        # Exactly-once across restarts comes from the store: a retried `deliver` skips what the stream shows.
        for shown in reversed(loaded.delivered):
            remember(self._delivered, shown)
        for row in reversed(work_events):
            self._track(row.kind, row.payload)
        self._recent.extend(event_of(row) for row in reversed(recent))
        announced = {e.get("offer_id") for e in self._recent if e["type"] == "offer"}
        now = time.monotonic()
        for offer in offers:
            self.holds[offer.offer_id] = Hold(offer=stored_offer(offer), direct=False, held_at=now,
                                              published=offer.offer_id in announced)

    async def _on_activated(self) -> None:
        # A held offer not shown yet is shown when its inbox's (retried) publish arrives.
        for hold in list(self.holds.values()):
            self._arm_lapse(hold)
        # Work that started or ended while this actor was down reaches the stream now.
        async with self._step_lock:
            await self._commit(events=self._stream_catch_up(self.active))
        self._notify_inboxes()
        if self._settings.agent_deactivate_after_s > 0 and in_ray_actor() and self._retirement is None:
            self._retirement = asyncio.ensure_future(self._retire_when_idle())
        if in_ray_actor() and self._heap_release is None:
            self._heap_release = asyncio.ensure_future(self._release_heap_when_quiet())

    async def _ensure_active(self) -> bool:
        # Every public method starts here: the idle clock of deactivation restarts with each call.
        self._last_call = time.monotonic()
        return await super()._ensure_active()

    def _track(self, kind: str, payload: dict[str, Any]) -> None:
        """What the event stream has shown as the agent's open work (a workspace rebuilds it the same way)."""
        tx_id = payload.get("transaction_id")
        if tx_id is None or kind not in WORK_EVENTS:
            return
        if kind == "transaction_closed" or (kind == "transferred" and payload.get("direction") == "away"):
            self._shown_open.pop(int(tx_id), None)
        else:
            self._shown_open[int(tx_id)] = int(payload.get("inbox_id") or 0)

    def _stream_catch_up(self, active: dict[int, int]) -> list[tuple[str, dict[str, Any]]]:
        """Events that make the stream's open work equal `active` (after a crash between a commit and its event)."""
        events: list[tuple[str, dict[str, Any]]] = [
            ("transaction_closed", {"transaction_id": tx, "inbox_id": inbox, "reason": "reconciled", "direction": None})
            for tx, inbox in self._shown_open.items() if tx not in active]
        events += [("assigned", {"transaction_id": tx, "inbox_id": inbox, "kind": "reconciled"})
                   for tx, inbox in active.items() if tx not in self._shown_open]
        return events

    # ------------------------------------------------------------------ health, and what inboxes route on

    @ray.method(concurrency_group="health")
    async def ping(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "activated": self._activated, "status": self.status,
                "stream_readers": self._signal.waiting(), "node_id": ray.get_runtime_context().get_node_id()}

    def _idle_since(self) -> datetime | None:
        return self.last_chat_end_at or self.available_since

    def _load_count(self) -> int:
        """Capacity in use: active transactions plus every hold (an offer may still be accepted)."""
        return len(self.active) + len(self.holds)

    def _ringing(self) -> Hold | None:
        return next((h for h in self.holds.values() if not h.direct), None)

    def snapshot(self) -> dict[str, Any]:
        """What inboxes route on; `version` orders snapshots: (activation epoch, sequence in it)."""
        self._seq += 1
        idle = self._idle_since()
        return {"user_id": self.user_id, "status": self.status, "max_concurrent": self.max_concurrent,
                "active_count": len(self.active) + sum(1 for h in self.holds.values() if h.direct),
                "has_pending_offer": self._ringing() is not None,
                "idle_since": idle.isoformat() if idle else None, "version": [self.epoch, self._seq]}

    # ------------------------------------------------------------------ the event log: one commit per step

    async def _commit(self, state: dict[str, Any] | None = None,
                      events: list[tuple[str, dict[str, Any]]] | None = None,
                      delivering: bool = False) -> list[StoredEvent]:
        """One store transaction for a step: the agent's state row and its new events.

        The caller holds the step lock. The commit also reads back every event of the stream after the newest
        one this actor knows, its own and any the gateway appended (follow-ups shown at intake), so the
        recent-events buffer never has a gap. Memory changes only after the commit. `delivering`: `events` are
        customer messages' `message` events, and the store writes only those whose message is still attached to
        their transaction (a close may have handed it on: `AgentStore.deliver_and_read`).
        """
        if not state and not events:
            return []
        new_events = list(events or [])
        last_id = self._last_known_id()
        try:
            if delivering:
                rows = await self.store.deliver_and_read(self.org_id, self.user_id, new_events, utcnow(),
                                                         after_id=last_id)
            else:
                rows = await self.store.commit_and_read(self.org_id, self.user_id, state, new_events, utcnow(),
                                                        after_id=last_id)
        except StoreUnavailable:
            # Lost mid-way (its connection, or the store actor running it): it may have committed.
            landed = await self._landed(last_id, new_events, some=delivering) if new_events else None
            if landed is None:
                raise
            rows = landed
        self._last_step = time.monotonic()
        self._absorb(rows)
        return rows

    def _last_known_id(self) -> int:
        return int(self._recent[-1]["id"]) if self._recent else self._known_id

    def _absorb(self, rows: list[StoredEvent]) -> None:
        """Events read from the store after the newest known one, in id order: into memory, and the streams told."""
        for row in rows:
            self._track(row.kind, row.payload)
            if row.kind == "offer":
                hold = self.holds.get(str(row.payload.get("offer_id")))
                if hold is not None:
                    # The inbox wrote it with the offer (`publish` is on its way): the offer as shown, with its
                    # conversation's id (held before the commit that opened it, it had none).
                    hold.offer = dict(row.payload)
                    hold.published = True
            # A customer message the stream shows: as a `message`, or as the first message of a claimed or transferred
            # conversation's assignment (a restarted inbox hands that one over again).
            message = row.payload.get("message") if row.kind == "message" else \
                row.payload.get("first_message") if row.kind in ("assigned", "transferred") else None
            tx_id = row.payload.get("transaction_id")
            if isinstance(message, dict) and message.get("direction") != "outbound" and "id" in message \
                    and tx_id is not None:
                remember(self._delivered, (int(tx_id), int(message["id"])))
            self._recent.append(event_of(row))
        if rows:
            self._known_id = rows[-1].id
            self._signal.notify()

    async def _take_told(self, told: list[LinkedEvent] | None) -> bool:
        """What another actor's commit appended to the stream, as it told it (the step lock held): taken without a
        read when it follows the newest event known; otherwise (a tell before it still on its way, or lost, or
        nothing told) the stream is read. Whether it was read."""
        rows = told_rows(told, self._last_known_id()) if told else None
        if rows is None:
            await self._catch_up()
            return True
        self._absorb(rows)
        return False

    async def _catch_up(self) -> None:
        """Read what other writers appended to the stream since the newest event known (the step lock held)."""
        while True:
            rows = await self.store.events_after(self.user_id, self._last_known_id(), CATCH_UP_PAGE)
            self._absorb(rows)
            if len(rows) < CATCH_UP_PAGE:
                return

    async def _landed(self, last_id: int, events: list[tuple[str, dict[str, Any]]],
                      some: bool = False) -> list[StoredEvent] | None:
        """Every event after `last_id` if the commit of `events` landed after all, None if it did not. Other
        writers may have appended between (the gateway's follow-ups, an inbox's offers and assignments), so the
        step's own are found in order by kind and payload. The caller's retry must not add them twice (a
        `message` shown twice, say). Asked until the store answers, for `OUTCOME_WAIT_S` at most. `some`: the
        commit may have written only some of `events` (a delivery skips messages no longer attached); one that
        wrote none counts as not landed, and its retry skips them again."""
        deadline = time.monotonic() + OUTCOME_WAIT_S
        while True:
            try:
                rows = await self.store.events_after(self.user_id, last_id, LANDED_READ_LIMIT)
                break
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    log.warning("agent %s: the outcome of a commit is unknown; the store is still unavailable",
                                self.user_id)
                    return None
                await asyncio.sleep(0.2)
        wanted = [(kind, json.loads(json.dumps(payload))) for kind, payload in events]
        found = matched = 0  # wanted events passed, and of those, found
        for row in rows:
            ahead = wanted[found:] if some else wanted[found:found + 1]
            hit = next((i for i, event in enumerate(ahead) if (row.kind, row.payload) == event), None)
            if hit is not None:
                found += hit + 1
                matched += 1
        if matched == 0:
            return None
        if found < len(wanted) and not some:
            raise RuntimeError(f"agent {self.user_id}: only {found} of a step's {len(wanted)} events after "
                               f"{last_id} are in the store")
        log.info("agent %s: a commit whose answer was lost had landed (events after %s)", self.user_id, last_id)
        return rows

    # ------------------------------------------------------------------ what the other parts provide

    def _arm_lapse(self, hold: Hold) -> None:
        raise NotImplementedError  # actors.agent_offers.AgentOffers

    def _drop_hold(self, hold: Hold) -> None:
        raise NotImplementedError  # actors.agent_offers.AgentOffers

    async def _change_status(self, status: str, reason: str | None,
                             extra_events: list[tuple[str, dict[str, Any]]] | None = None,
                             keep: str | None = None, **values: Any) -> list[Hold]:
        raise NotImplementedError  # actors.agent_presence.AgentPresence

    def _notify_inboxes(self, answered: int | None = None) -> None:
        raise NotImplementedError  # actors.agent_presence.AgentPresence

    def _answer(self, inbox_id: int | None) -> dict[str, Any]:
        raise NotImplementedError  # actors.agent_presence.AgentPresence

    def _heard_from(self, inbox_id: int) -> None:
        raise NotImplementedError  # actors.agent_presence.AgentPresence

    async def _retire_when_idle(self) -> None:
        raise NotImplementedError  # actors.agent_presence.AgentPresence

    async def _release_heap_when_quiet(self) -> None:
        raise NotImplementedError  # actors.agent_presence.AgentPresence
