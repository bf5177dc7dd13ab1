"""AgentActor: owns one agent's presence, capacity, held offers, active transactions and event stream.

Deployed as the named Ray actor `agent:<org>:<user>`, activated when first needed.

Offers are reservations (Twilio TaskRouter's model): an inbox asks to `hold` an offer id, commits
the offer to the store, then `publish`es it (the agent sees it), and later `confirm`s or `release`s
it. Every call names the offer or transaction id and is idempotent, so an inbox may retry any of
them after a lost reply. A hold the inbox never follows up lapses by itself at `expires_at`, and
`resync` rebuilds what the agent holds from the store, the single truth.

Every step runs in the default concurrency group, under one lock: decide, commit one store
transaction (state and events together), then change memory, then tell the inboxes. Stream
readers run in their own group ("stream"), so a thousand open event streams never starve the
calls inboxes make; health checks have theirs ("health").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import ray

from actors.activation import StoreBackedActor, in_ray_actor
from actors.directory import Directory
from actors.event_signal import EventSignal
from actors.free_heap import release_free_heap
from actors.mailbox import Mailbox
from config.actor_settings import ActorSettings
from routing.presence import after_missed_offer, missed_reason
from store.agent_store import (
    AgentStore,
    StoredEvent,
    StoredOffer,
    is_postgres,
    open_agent_store,
)
from store.clock import utcnow
from store.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Events kept in memory for live subscribers; older cursors are served from the store.
RECENT_EVENTS = 200
# After `expires_at` the inbox's own timer normally ends the offer; the agent's lapse waits a little
# longer so a confirm committed just before expiry is not beaten by it.
HOLD_LAPSE_GRACE_S = 2.0
# A hold the store does not show yet may still be in its inbox's commit: resync keeps it this long.
UNCOMMITTED_HOLD_GRACE_S = 5.0
# How long a claim's or transfer's hold may wait for its inbox's commit.
DIRECT_HOLD_S = 15.0
# How long a commit whose answer was lost waits for the store to tell whether it landed.
OUTCOME_WAIT_S = 10.0
# An agent without a call or a step for this long gives the heap its work freed back (`actors/free_heap.py`).
QUIET_AFTER_S = 5.0
# The events that open or end an agent's work, and how many of them a reload reads to know what the
# stream has shown as open.
WORK_EVENTS = ("assigned", "transferred", "transaction_closed")
STREAM_WORK_HISTORY = 1000
# Offer ids and message ids already dealt with, so a retried call does not act twice.
REMEMBERED_IDS = 5000
# The inboxes the agent serves are read from the store at most this often; an inbox's call or resync from an
# inbox not among them reads them again at once (see `_served_inboxes`).
SERVED_INBOXES_TTL_S = 30.0
# An event stream ends by itself after this long without an event, or this long in all (see stream_events).
STREAM_IDLE_S = 15.0
STREAM_LIFETIME_S = 120.0
# Events read at once when catching up with what the gateway appended to the stream.
CATCH_UP_PAGE = 500
# Events read to find whether a commit whose answer was lost landed.
LANDED_READ_LIMIT = 1000


@dataclass
class Hold:
    offer: dict[str, Any]
    # A claim or a transfer: it takes capacity but is no "ringing" offer.
    direct: bool
    held_at: float
    published: bool = False

    @property
    def transaction_id(self) -> int:
        return int(self.offer["transaction_id"])

    @property
    def inbox_id(self) -> int:
        return int(self.offer["inbox_id"])

    @property
    def expires_at(self) -> datetime | None:
        value = self.offer.get("expires_at")
        return datetime.fromisoformat(value) if value else None


def _remember(ids: OrderedDict[Any, None], key: Any) -> None:
    ids[key] = None
    while len(ids) > REMEMBERED_IDS:
        ids.popitem(last=False)


class AgentActor(StoreBackedActor):
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
        # (inbox ids, read at): the inboxes snapshots are pushed to, cached (`_served_inboxes`).
        self._inboxes: tuple[frozenset[int], float] | None = None
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
            _remember(self._delivered, shown)
        for row in reversed(work_events):
            self._track(row.kind, row.payload)
        self._recent.extend(_event_of(row) for row in reversed(recent))
        announced = {e.get("offer_id") for e in self._recent if e["type"] == "offer"}
        now = time.monotonic()
        for offer in offers:
            self.holds[offer.offer_id] = Hold(offer=_stored_offer(offer), direct=False, held_at=now,
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

    # ------------------------------------------------------------------ views

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

    async def view(self) -> dict[str, Any] | None:
        if not await self._ensure_active():
            return None
        return self._view()

    def _view(self) -> dict[str, Any]:
        idle = self._idle_since()
        ringing = self._ringing()
        pending = None
        if ringing is not None:
            pending = {key: ringing.offer.get(key) for key in ("transaction_id", "inbox_id", "expires_at")}
        return {"user_id": self.user_id, "status": self.status, "status_reason": self.status_reason,
                "max_concurrent": self.max_concurrent, "active_transactions": sorted(self.active),
                "idle_since": idle.isoformat() if idle and not self.active else None,
                "pending_offer": pending}

    # ------------------------------------------------------------------ presence and settings

    async def set_status(self, status: str, reason: str | None = None) -> dict[str, Any] | None:
        self._inboxes = None  # a person's act, not the message path: the inboxes told are read anew
        if not await self._ensure_active():
            return None
        async with self._step_lock:
            if status == self.status and reason == self.status_reason:
                return self._view()
            withdrawn = await self._change_status(status, reason)
        for hold in withdrawn:
            # The inbox rescinds and reroutes at once (idempotent on the offer id).
            self._mailbox(hold.inbox_id).post("agent_withdrew", self.user_id, hold.offer["offer_id"])
        self._notify_inboxes()
        return self._view()

    async def _change_status(self, status: str, reason: str | None,
                             extra_events: list[tuple[str, dict[str, Any]]] | None = None,
                             keep: str | None = None, **values: Any) -> list[Hold]:
        """One step (lock held): the new status, its event and any withdrawn offers, in one transaction.

        `keep`: an offer the caller ends itself (it is not withdrawn from its inbox).
        """
        now = utcnow()
        available_since = now if status == "available" and self.status != "available" else self.available_since
        withdrawn = [h for oid, h in self.holds.items() if not h.direct and oid != keep] \
            if status != "available" else []
        events = list(extra_events or [])
        events.append(("status", {"status": status, "reason": reason}))
        events += [("offer_rescinded", _rescinded(h, f"agent {status}")) for h in withdrawn if h.published]
        missed = 0 if status == "available" else values.pop("missed_in_a_row", self.missed_in_a_row)
        await self._commit(state=dict(status=status, status_reason=reason, status_changed_at=now,
                                      available_since=available_since, missed_in_a_row=missed, **values),
                           events=events)
        self.status, self.status_reason, self.available_since = status, reason, available_since
        self.missed_in_a_row = missed
        for hold in withdrawn:
            self._drop_hold(hold)
        return withdrawn

    async def set_max_concurrent(self, max_concurrent: int) -> dict[str, Any] | None:
        self._inboxes = None
        if not await self._ensure_active():
            return None
        async with self._step_lock:
            await self._commit(state={"max_concurrent": max_concurrent})
            self.max_concurrent = max_concurrent
        self._notify_inboxes()
        return self._view()

    # ------------------------------------------------------------------ offers and assignments

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        """Reserve capacity for an offer (or a claim/transfer when `direct`); idempotent on the offer id.

        Nothing is written: the inbox commits the offer next, and a hold it never follows up lapses.
        """
        if not await self._ensure_active():
            return {"ok": False, "reason": "agent not found", "snapshot": self.snapshot()}
        self._heard_from(int(offer["inbox_id"]))
        async with self._step_lock:
            offer_id = offer["offer_id"]
            if offer_id in self.holds:
                return {"ok": True, "reason": None, "snapshot": self.snapshot()}
            refusal = self._hold_refusal(offer_id, direct)
            if refusal is not None:
                return {"ok": False, "reason": refusal, "snapshot": self.snapshot()}
            hold = Hold(offer=offer, direct=direct, held_at=time.monotonic())
            if direct:
                hold.offer = {**offer, "expires_at": (utcnow() + timedelta(seconds=DIRECT_HOLD_S)).isoformat()}
            self.holds[offer_id] = hold
            self._arm_lapse(hold)
            return {"ok": True, "reason": None, "snapshot": self.snapshot()}

    def _hold_refusal(self, offer_id: str, direct: bool) -> str | None:
        if offer_id in self._finished_offers:
            return "the offer is over"
        if self.status != "available":
            return f"agent is {self.status}"
        if not direct and self._ringing() is not None:
            return "agent has an offer ringing"
        if self._load_count() >= self.max_concurrent:
            return f"agent is at capacity ({self._load_count()}/{self.max_concurrent})"
        return None

    async def publish(self, offer: dict[str, Any]) -> dict[str, Any]:
        """The inbox committed the offer, and with it the offer's event on the stream: the hold is shown (a read,
        not a write; idempotent on the offer id). A hold that lapsed before this came has its offer withdrawn."""
        await self._ensure_active()
        async with self._step_lock:
            await self._catch_up()
            offer_id = offer["offer_id"]
            hold = self.holds.get(offer_id)
            if hold is not None:
                hold.offer = offer
                hold.published = True
            elif self._shown_ringing(offer_id):
                await self._commit(events=[("offer_rescinded", {
                    "transaction_id": int(offer["transaction_id"]), "inbox_id": int(offer["inbox_id"]),
                    "offer_id": offer_id, "reason": "expired"})])
            return self.snapshot()

    def _shown_ringing(self, offer_id: str) -> bool:
        """Whether the stream's latest event of the offer shows it (no rescind or assignment after it)."""
        latest = None
        for event in self._recent:
            if event.get("offer_id") == offer_id:
                latest = event["type"]
        return latest == "offer"

    async def confirm(self, offer_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The inbox committed the assignment (accepted, claimed or transferred) and, with it, the assignment's
        event on the stream (`store.agent_streams`): the hold becomes active work. A read, not a write.

        The stream is the truth: a hold that lapsed meanwhile does not stop it, and a conversation the stream shows
        ended since (a retried confirm coming after the close) is not taken on again.
        """
        await self._ensure_active()
        async with self._step_lock:
            if offer_id in self._confirmed:
                return self.snapshot()  # a retry of a confirm whose answer was slow
            await self._catch_up()
            hold = self.holds.get(offer_id)
            if hold is not None:
                self._drop_hold(hold)
            _remember(self._finished_offers, offer_id)
            _remember(self._confirmed, offer_id)
            if payload.get("kind", "accepted") == "accepted" and self.missed_in_a_row:
                await self._commit(state={"missed_in_a_row": 0})
                self.missed_in_a_row = 0
            tx_id, inbox_id = int(payload["transaction_id"]), int(payload["inbox_id"])
            if tx_id not in self._shown_open:
                return self.snapshot()  # ended since (the stream shows it): no work taken on
            self.active[tx_id] = inbox_id
        self._notify_inboxes(answered=inbox_id)
        return self.snapshot()

    async def release(self, offer_id: str, reason: str) -> dict[str, Any]:
        """The inbox ended the offer (missed, declined, rescinded). Missing too many in a row sets the agent away."""
        await self._ensure_active()
        async with self._step_lock:
            hold = self.holds.get(offer_id)
            if hold is None:
                _remember(self._finished_offers, offer_id)
                return self.snapshot()
            if not hold.published:
                await self._catch_up()  # the inbox's commit may have shown it with its publish still on the way
            events = [("offer_rescinded", _rescinded(hold, reason))] if hold.published else []
            if reason == "missed":
                threshold = await self.store.missed_offers_before_away(self.org_id)
                outcome = after_missed_offer(self.missed_in_a_row, threshold)
                if outcome.set_away and self.status == "available":
                    await self._change_status("away", missed_reason(threshold), extra_events=events,
                                              keep=offer_id, missed_in_a_row=outcome.missed_in_a_row)
                else:
                    await self._commit(state={"missed_in_a_row": outcome.missed_in_a_row}, events=events)
                    self.missed_in_a_row = outcome.missed_in_a_row
            else:
                state = {"missed_in_a_row": 0} if reason == "declined" else None
                await self._commit(state=state, events=events)
                if state is not None:
                    self.missed_in_a_row = 0
            self._drop_hold(hold)
        self._notify_inboxes(answered=hold.inbox_id)
        return self.snapshot()

    async def end(self, transaction_id: int, reason: str, at: str | None = None) -> dict[str, Any]:
        """Closed or transferred away: capacity frees and the idle clock starts at `at` (idempotent).

        The inbox's commit wrote the event on the stream and the idle clock's start (`store.agent_streams`): the
        agent reads it, and writes only what the stream lacks (a caller that did not write it: no `at`)."""
        await self._ensure_active()
        async with self._step_lock:
            await self._catch_up()
            ended_at = datetime.fromisoformat(at) if at else utcnow()
            inbox_id = self.active.get(transaction_id, self._shown_open.get(transaction_id))
            if transaction_id in self._shown_open and inbox_id is not None:
                kind = "transaction_closed" if reason == "closed" else "transferred"
                state = {"last_chat_end_at": ended_at} if transaction_id in self.active else None
                await self._commit(state=state, events=[(kind, {
                    "transaction_id": transaction_id, "inbox_id": inbox_id, "reason": reason,
                    "direction": "away" if kind == "transferred" else None})])
            if transaction_id not in self.active:
                return self.snapshot()  # ended before (a retry, or a reload read the store after the commit)
            inbox_id = self.active.pop(transaction_id)
            self.last_chat_end_at = ended_at
        self._notify_inboxes(answered=inbox_id)
        return self.snapshot()

    async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]]) -> None:
        """New customer messages of active transactions, (transaction id, its messages) in order, in one
        commit; a message already delivered with its transaction is skipped, and so is one the store no longer
        shows attached to it (the conversation's close handed it on before this commit)."""
        await self._ensure_active()
        async with self._step_lock:
            if any((int(tx_id), int(m["id"])) not in self._delivered
                   for tx_id, messages in deliveries for m in messages):
                # Follow-ups the gateway showed at intake are on the stream already: a read, not a commit.
                await self._catch_up()
            # (transaction, message id) -> message, in order
            fresh: dict[tuple[int, int], dict[str, Any]] = {}
            for tx_id, messages in deliveries:
                for message in messages:
                    key = (int(tx_id), int(message["id"]))
                    if key not in self._delivered:
                        fresh.setdefault(key, message)
            if not fresh:
                return
            await self._commit(events=[("message", {"transaction_id": tx_id, "inbox_id": inbox_id, "message": m})
                                       for (tx_id, _), m in fresh.items()], delivering=True)

    async def resync(self) -> dict[str, Any]:
        """Rebuild held offers and active work from the store (after an inbox restarted, lost contact or
        gained the agent as a member)."""
        self._inboxes = None
        if not await self._ensure_active():
            return self.snapshot()
        async with self._step_lock:
            await self._catch_up()  # what the inboxes' commits showed: an offer on the stream is not shown again
            active, offers = await self.store.work(self.user_id)
            now = time.monotonic()
            stored = {o.offer_id: o for o in offers}
            unstored = [h for oid, h in self.holds.items() if oid not in stored and not h.direct]
            stale = [h for h in unstored if now - h.held_at > UNCOMMITTED_HOLD_GRACE_S]
            if len(stale) < len(unstored):
                # Some may still be committing: look again once their grace is over.
                youngest = max(h.held_at for h in unstored if h not in stale)
                asyncio.get_running_loop().call_later(
                    UNCOMMITTED_HOLD_GRACE_S - (now - youngest) + 0.1,
                    lambda: asyncio.ensure_future(self.resync()))
            new = [o for oid, o in stored.items() if oid not in self.holds and oid not in self._finished_offers]
            changed_work = active != self.active
            events = [("offer_rescinded", _rescinded(h, "withdrawn by the inbox")) for h in stale if h.published]
            events += [("offer", _stored_offer(o)) for o in new if not self._shown_ringing(o.offer_id)]
            events += self._stream_catch_up(active)
            if events:
                await self._commit(events=events)
            for hold in stale:
                self._drop_hold(hold)
            for offer in new:
                hold = Hold(offer=_stored_offer(offer), direct=False, held_at=now, published=True)
                self.holds[offer.offer_id] = hold
                self._arm_lapse(hold)
            self.active = active
        if events or changed_work:
            self._notify_inboxes()
        return self.snapshot()

    async def push_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Append an event to the agent's stream (messaging: `message`, `message_status`); one step."""
        await self._ensure_active()
        async with self._step_lock:
            await self._commit(events=[(kind, payload)])

    # ------------------------------------------------------------------ holds that lapse by themselves

    def _arm_lapse(self, hold: Hold) -> None:
        expires = hold.expires_at
        delay = HOLD_LAPSE_GRACE_S + (max(0.0, (expires - utcnow()).total_seconds()) if expires else 0.0)
        offer_id = hold.offer["offer_id"]
        self._lapse_timers[offer_id] = asyncio.ensure_future(self._lapse_after(offer_id, delay))

    def _drop_hold(self, hold: Hold) -> None:
        offer_id = hold.offer["offer_id"]
        self.holds.pop(offer_id, None)
        _remember(self._finished_offers, offer_id)
        timer = self._lapse_timers.pop(offer_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _lapse_after(self, offer_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            async with self._step_lock:
                hold = self.holds.get(offer_id)
                if hold is None:
                    return
                if not hold.published:
                    await self._catch_up()  # shown by the inbox's commit, its publish still on the way?
                if hold.published:
                    await self._commit(events=[("offer_rescinded", _rescinded(hold, "expired"))])
                self._drop_hold(hold)
            self._notify_inboxes()
        except Exception:
            log.exception("lapse of offer %s failed; retrying", offer_id)
            self._lapse_timers[offer_id] = asyncio.ensure_future(self._lapse_after(offer_id, 1.0))

    # ------------------------------------------------------------------ event stream (own concurrency group)

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
                    hold.published = True  # the inbox wrote it with the offer (`publish` is on its way)
            # A customer message the stream shows: as a `message`, or as the first message of a claimed or transferred
            # conversation's assignment (a restarted inbox hands that one over again).
            message = row.payload.get("message") if row.kind == "message" else \
                row.payload.get("first_message") if row.kind in ("assigned", "transferred") else None
            tx_id = row.payload.get("transaction_id")
            if isinstance(message, dict) and message.get("direction") != "outbound" and "id" in message \
                    and tx_id is not None:
                _remember(self._delivered, (int(tx_id), int(message["id"])))
            self._recent.append(_event_of(row))
        if rows:
            self._known_id = rows[-1].id
            self._signal.notify()

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

    async def _wait_active(self) -> None:
        """Activation runs on the main loop; a stream reader (another loop) waits for it there."""
        self._last_call = time.monotonic()
        if self._activated:
            return
        loop = asyncio.get_running_loop()
        if self._main_loop is None or self._main_loop is loop:
            await self._ensure_active()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._ensure_active(), self._main_loop))

    @ray.method(concurrency_group="stream")
    async def stream_events(self, after_id: int, idle_s: float = STREAM_IDLE_S, lifetime_s: float = STREAM_LIFETIME_S,
                            limit: int = 500) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of events after the cursor, each yielded as soon as it is committed: one call carries a
        stream's events (a Ray streaming generator), where a call per batch cost ~0.5 ms more CPU per event.

        Ray does not stop an actor's generator when its caller dies, so a stream ends by itself after
        `idle_s` without an event or `lifetime_s` in all; the caller opens the next from its cursor.
        """
        await self._wait_active()
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime_s
        waiter = self._signal.register()
        try:
            while True:
                # Cleared before reading: an event committed after the read sets it again.
                waiter[1].clear()
                events = await self._events_after(after_id, limit)
                if events:
                    after_id = events[-1]["id"]
                    self._last_call = time.monotonic()
                    yield events
                wait_s = min(idle_s, ends_at - loop.time())
                if wait_s <= 0:
                    return
                try:
                    await asyncio.wait_for(waiter[1].wait(), timeout=wait_s)
                except TimeoutError:
                    return
        finally:
            self._signal.discard(waiter)
            self._last_call = time.monotonic()

    @ray.method(concurrency_group="stream")
    async def last_event_id(self) -> int:
        await self._wait_active()
        recent = list(self._recent)
        if recent:
            return int(recent[-1]["id"])
        return await self._reader_store().last_event_id(self.user_id)

    def _reader_store(self) -> AgentStore:
        """The store as seen from the stream group's loop (a PostgreSQL connection belongs to the loop that uses it)."""
        if self._main_loop is None or asyncio.get_running_loop() is self._main_loop or self.store.reads_from_any_loop:
            return self.store
        if self._stream_store is None:
            self._stream_store = open_agent_store(self._settings.database_url,
                                                  linger_s=self._settings.agent_connection_linger_s,
                                                  name=f"wa-router agent {self.user_id} stream")
        return self._stream_store

    async def _events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        recent = list(self._recent)  # a copy: the main loop appends from another thread
        if recent and recent[0]["id"] <= after_id + 1:
            return [e for e in recent if e["id"] > after_id][:limit]
        return [_event_of(row) for row in await self._reader_store().events_after(self.user_id, after_id, limit)]

    # ------------------------------------------------------------------ telling inboxes

    def _mailbox(self, inbox_id: int) -> Mailbox:
        mailbox = self._mailboxes.get(inbox_id)
        if mailbox is None:
            inbox = self.directory.inbox(self.org_id, inbox_id)

            async def send(method: str, args: tuple[Any, ...]) -> Any:
                return await getattr(inbox, method)(*args)

            mailbox = Mailbox(f"agent {self.user_id} -> inbox {inbox_id}", send,
                              deadline_s=self._settings.actor_call_timeout_s, give_up_after_s=60.0)
            self._mailboxes[inbox_id] = mailbox
        return mailbox

    def _notify_inboxes(self, answered: int | None = None) -> None:
        """Push the newest snapshot to every inbox the agent serves (retried; only the newest is kept).

        `answered`: the inbox whose call this step answers. The answer carries the snapshot, which that
        inbox absorbs whenever it arrives (`AgentLink.tell`), so it is not pushed there too.
        """
        self._notifying = asyncio.ensure_future(self._push_snapshot(answered))
        self._notifying.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _heard_from(self, inbox_id: int) -> None:
        """An inbox called: one the cached list does not know (the agent just joined it) is read anew."""
        if self._inboxes is not None and inbox_id not in self._inboxes[0]:
            self._inboxes = None

    async def _served_inboxes(self) -> frozenset[int]:
        """The inboxes the agent serves, off the message path: read again after `SERVED_INBOXES_TTL_S`, after a
        resync (an inbox that gained the agent tells it so) or a call from an inbox not among them."""
        now = time.monotonic()
        if self._inboxes is None or now - self._inboxes[1] > SERVED_INBOXES_TTL_S:
            self._inboxes = (frozenset(await self.store.inboxes_of(self.user_id)), now)
        return self._inboxes[0]

    async def _push_snapshot(self, answered: int | None) -> None:
        inbox_ids = await self._served_inboxes()
        snapshot = self.snapshot()
        for inbox_id in inbox_ids:
            if inbox_id != answered:
                self._mailbox(inbox_id).post("agent_changed", snapshot, key="snapshot")

    # ------------------------------------------------------------------ deactivation

    def _idle_enough_to_retire(self) -> bool:
        """Offline, no work, no offer held, no stream reader, nothing still being told: the store holds all of it."""
        return (self._activated and self.status == "offline" and not self.active and not self.holds
                and not self._signal.has_waiters() and not any(len(m) for m in self._mailboxes.values())
                and (self._notifying is None or self._notifying.done())
                and time.monotonic() - self._last_call >= self._settings.agent_deactivate_after_s)

    async def _retire_when_idle(self) -> None:
        """Orleans' idle deactivation: an agent process costs ~50 MiB, so an absent agent gives it back.

        The check is cheap and rare (a few times per deactivation period). A call that races the exit
        sees the actor gone and its caller activates it again, from the store.
        """
        period = max(1.0, self._settings.agent_deactivate_after_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                if self._idle_enough_to_retire():
                    async with self._step_lock:  # no step is half-way while the process goes
                        if self._idle_enough_to_retire():
                            log.info("agent %s: offline with no work for %.0fs; deactivating", self.user_id,
                                     self._settings.agent_deactivate_after_s)
                            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                            return
            except Exception:
                log.exception("agent %s: deactivation check failed", self.user_id)

    async def _release_heap_when_quiet(self) -> None:
        """Once the agent has had no call and no step for `QUIET_AFTER_S`, give what its work freed back, once
        per quiet spell: hundreds of idle agent processes would otherwise each keep a few MiB of free heap.
        A release costs ~1 ms when little was freed (an open stream's reconnect every 15 s: ~0.01 % of a core)."""
        released_at = 0.0
        while True:
            await asyncio.sleep(QUIET_AFTER_S)
            try:
                now = time.monotonic()
                last_active = max(self._last_step, self._last_call)
                if last_active > released_at and now - last_active >= QUIET_AFTER_S:
                    release_free_heap()
                    released_at = now
            except Exception:
                log.exception("agent %s: releasing free heap failed", self.user_id)


def _event(event_id: int, kind: str, at: datetime, payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "at": at.isoformat(), **payload}


def _event_of(row: StoredEvent) -> dict[str, Any]:
    return _event(row.id, row.kind, row.created_at, row.payload)


def _stored_offer(offer: StoredOffer) -> dict[str, Any]:
    return {"offer_id": offer.offer_id, "transaction_id": offer.transaction_id, "inbox_id": offer.inbox_id,
            "expires_at": offer.expires_at.isoformat() if offer.expires_at else None}


def _rescinded(hold: Hold, reason: str) -> dict[str, Any]:
    return {"transaction_id": hold.transaction_id, "inbox_id": hold.inbox_id, "offer_id": hold.offer["offer_id"],
            "reason": reason}
