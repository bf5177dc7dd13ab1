"""AgentActor: owns one agent's presence, capacity, pending offer, active transactions and event stream.

Deployed as the named Ray actor `agent:<org>:<user>`, activated when first needed. Capacity is
reserved here, in code without an await between check and set, so two inboxes offering at the
same instant can never push the agent over `max_concurrent`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any

import ray
from sqlalchemy import select, update

from actors.activation import StoreBackedActor
from actors.directory import Directory, spawn
from config.settings import Settings
from store import routing_repo as repo
from store.tables import AgentEvent, AgentState
from store.types import utcnow

log = logging.getLogger(__name__)

# Events kept in memory for live subscribers; older cursors are served from the store.
RECENT_EVENTS = 1000


class AgentActor(StoreBackedActor):
    def __init__(self, org_id: int, user_id: int, settings: Settings, directory: Directory | None = None) -> None:
        super().__init__(org_id, settings, directory)
        self.user_id = user_id
        self._user_exists = False
        self._emit_lock = asyncio.Lock()
        self._new_event = asyncio.Condition()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.status = "offline"
        self.max_concurrent = 1
        self.available_since: datetime | None = None
        self.last_chat_end_at: datetime | None = None
        self.pending: dict[str, Any] | None = None
        self.active: dict[int, int] = {}

    def _exists(self) -> bool:
        return self._user_exists

    async def _load(self) -> None:
        async with self.db.session() as session:
            state = await repo.load_agent_state(session, self.org_id, self.user_id)
            if state is not None:
                self._user_exists = True
                self.status = state.status
                self.max_concurrent = state.max_concurrent
                self.available_since = state.available_since
                self.last_chat_end_at = state.last_chat_end_at
                # Offers and assignments are written by the inboxes: the store tells what we hold.
                self.active, self.pending = await repo.agent_work(session, self.user_id)

    # ------------------------------------------------------------------ views

    @ray.method(concurrency_group="health")
    async def ping(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "activated": self._activated, "status": self.status}

    def _idle_since(self) -> datetime | None:
        return self.last_chat_end_at or self.available_since

    def snapshot(self) -> dict[str, Any]:
        """What inboxes route on (pushed to them on every change that affects eligibility)."""
        idle = self._idle_since()
        # `version` orders snapshots that reach an inbox through concurrent pushes.
        return {"user_id": self.user_id, "status": self.status, "max_concurrent": self.max_concurrent,
                "active_count": len(self.active), "has_pending_offer": self.pending is not None,
                "idle_since": idle.isoformat() if idle else None, "version": time.time_ns()}

    async def view(self) -> dict[str, Any] | None:
        if not await self._ensure_active():
            return None
        return self._view()

    def _view(self) -> dict[str, Any]:
        idle = self._idle_since()
        pending = None
        if self.pending is not None:
            pending = {key: self.pending.get(key) for key in ("transaction_id", "inbox_id", "expires_at")}
        return {"user_id": self.user_id, "status": self.status, "max_concurrent": self.max_concurrent,
                "active_transactions": sorted(self.active),
                "idle_since": idle.isoformat() if idle and not self.active else None,
                "pending_offer": pending}

    # ------------------------------------------------------------------ presence and settings

    async def set_status(self, status: str) -> dict[str, Any] | None:
        if not await self._ensure_active():
            return None
        if status == self.status:
            return self._view()
        now = utcnow()
        self.status = status
        if status == "available":
            self.available_since = now
        withdrawn = self.pending if status != "available" else None
        if withdrawn is not None:
            self.pending = None
        await self._save_state(status=status, status_changed_at=now, available_since=self.available_since)
        await self._emit("status", {"status": status})
        if withdrawn is not None:
            await self._emit("offer_rescinded", {"transaction_id": withdrawn["transaction_id"],
                                                 "inbox_id": withdrawn["inbox_id"], "reason": f"agent {status}"})
            # The inbox rescinds and reroutes at once; we do not wait for it (it may be calling us).
            inbox = self.directory.inbox(self.org_id, withdrawn["inbox_id"])
            spawn(inbox.agent_withdrew(self.user_id, withdrawn["transaction_id"]),
                  f"withdraw offer {withdrawn['transaction_id']}")
        await self._notify_inboxes()
        return self._view()

    async def set_max_concurrent(self, max_concurrent: int) -> dict[str, Any] | None:
        if not await self._ensure_active():
            return None
        self.max_concurrent = max_concurrent
        await self._save_state(max_concurrent=max_concurrent)
        await self._notify_inboxes()
        return self._view()

    # ------------------------------------------------------------------ offers and assignments

    async def reserve_offer(self, offer: dict[str, Any]) -> dict[str, Any]:
        """Hold an offer for the agent if eligible. Check-and-set has no await in between: atomic."""
        await self._ensure_active()
        if self.pending is not None and self.pending["transaction_id"] == offer["transaction_id"]:
            self.pending = offer  # a retried offer for the same transaction
            return {"ok": True, "snapshot": self.snapshot()}
        eligible = self.status == "available" and self.pending is None and len(self.active) < self.max_concurrent
        if not self._user_exists or not eligible:
            return {"ok": False, "snapshot": self.snapshot()}
        self.pending = offer
        await self._emit("offer", offer)
        return {"ok": True, "snapshot": self.snapshot()}

    async def confirm_offer(self, transaction_id: int) -> dict[str, Any]:
        """The agent accepted: the held offer becomes an active transaction.

        Answers with the new snapshot, so the offering inbox routes on it at once (the agent may
        have capacity left); the other inboxes are told as well (they saw it holding an offer).
        """
        await self._ensure_active()
        if self.pending is None or self.pending["transaction_id"] != transaction_id:
            return {"ok": False, "snapshot": self.snapshot()}
        offer = self.pending
        self.pending = None
        self.active[transaction_id] = offer["inbox_id"]
        await self._emit("assigned", {**offer, "kind": "accepted"})
        await self._notify_inboxes()
        return {"ok": True, "snapshot": self.snapshot()}

    async def release_offer(self, transaction_id: int, reason: str) -> dict[str, Any]:
        """The inbox ended its offer; answers with the snapshot the inbox routes on next."""
        await self._ensure_active()
        if self.pending is None or self.pending["transaction_id"] != transaction_id:
            return self.snapshot()
        offer = self.pending
        self.pending = None
        await self._emit("offer_rescinded", {"transaction_id": transaction_id, "inbox_id": offer["inbox_id"],
                                             "reason": reason})
        await self._notify_inboxes()
        return self.snapshot()

    async def assign_direct(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Take a transaction without an offer (a claim, or a supervisor's transfer)."""
        if not await self._ensure_active():
            return {"ok": False, "reason": "agent not found", "snapshot": self.snapshot()}
        if self.status != "available":
            return {"ok": False, "reason": f"agent is {self.status}", "snapshot": self.snapshot()}
        # A held offer counts against capacity too: it may still be accepted.
        held = len(self.active) + (1 if self.pending is not None else 0)
        if held >= self.max_concurrent:
            return {"ok": False, "reason": f"agent is at capacity ({held}/{self.max_concurrent})",
                    "snapshot": self.snapshot()}
        self.active[payload["transaction_id"]] = payload["inbox_id"]
        kind = payload.get("kind", "assigned")
        await self._emit("transferred" if kind == "transferred" else "assigned", payload)
        await self._notify_inboxes()
        return {"ok": True, "reason": None, "snapshot": self.snapshot()}

    async def deliver_message(self, transaction_id: int, inbox_id: int, message: dict[str, Any]) -> None:
        await self._ensure_active()
        await self._emit("message", {"transaction_id": transaction_id, "inbox_id": inbox_id, "message": message})

    async def transaction_ended(self, transaction_id: int, reason: str) -> dict[str, Any]:
        """Closed or transferred away: capacity frees and the idle clock starts now.

        The event is emitted before any other await, so the stream never shows a later assignment
        ahead of this end (it would look like the agent was over capacity).
        """
        await self._ensure_active()
        inbox_id = self.active.pop(transaction_id, None)
        now = utcnow()
        self.last_chat_end_at = now
        kind = "transaction_closed" if reason == "closed" else "transferred"
        await self._emit(kind, {"transaction_id": transaction_id, "inbox_id": inbox_id, "reason": reason,
                                "direction": "away" if kind == "transferred" else None})
        await self._save_state(last_chat_end_at=now)
        await self._notify_inboxes()
        return self.snapshot()

    # ------------------------------------------------------------------ event stream

    async def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        # Serialised so event ids reach subscribers in the order the store gave them.
        async with self._emit_lock:
            now = utcnow()
            async with self.db.session() as session:
                row = AgentEvent(org_id=self.org_id, user_id=self.user_id, kind=kind, payload=payload, created_at=now)
                session.add(row)
                await session.flush()
                event = {"id": row.id, "type": kind, "at": now.isoformat(), **payload}
            self._recent.append(event)
        async with self._new_event:
            self._new_event.notify_all()

    async def next_events(self, after_id: int, timeout_s: float = 20.0, limit: int = 500) -> list[dict[str, Any]]:
        """Events after the cursor; waits up to `timeout_s` for one when there are none yet."""
        await self._ensure_active()
        events = await self._events_after(after_id, limit)
        if events:
            return events
        async with self._new_event:
            # An event emitted while the store was read above is in `_recent` already: do not wait.
            if self._recent and self._recent[-1]["id"] > after_id:
                return await self._events_after(after_id, limit)
            try:
                await asyncio.wait_for(self._new_event.wait(), timeout=timeout_s)
            except TimeoutError:
                return []
        return await self._events_after(after_id, limit)

    async def last_event_id(self) -> int:
        await self._ensure_active()
        if self._recent:
            return int(self._recent[-1]["id"])
        async with self.db.session() as session:
            last = await session.scalar(select(AgentEvent.id).where(AgentEvent.user_id == self.user_id)
                                        .order_by(AgentEvent.id.desc()).limit(1))
        return int(last or 0)

    async def _events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        if self._recent and self._recent[0]["id"] <= after_id + 1:
            return [e for e in self._recent if e["id"] > after_id][:limit]
        async with self.db.session() as session:
            rows = (await session.scalars(
                select(AgentEvent).where(AgentEvent.user_id == self.user_id, AgentEvent.id > after_id)
                .order_by(AgentEvent.id).limit(limit)
            )).all()
        return [{"id": r.id, "type": r.kind, "at": r.created_at.isoformat(), **r.payload} for r in rows]

    # ------------------------------------------------------------------ persistence and notifications

    async def _save_state(self, **values: Any) -> None:
        async with self.db.session() as session:
            await session.execute(update(AgentState).where(AgentState.user_id == self.user_id).values(**values))

    async def _notify_inboxes(self) -> None:
        """Push the new snapshot to every inbox the agent serves; fire-and-forget to avoid call cycles."""
        async with self.db.session() as session:
            inbox_ids = await repo.inboxes_of_agent(session, self.user_id)
        snapshot = self.snapshot()
        for inbox_id in inbox_ids:
            spawn(self.directory.inbox(self.org_id, inbox_id).agent_changed(snapshot),
                  f"notify inbox {inbox_id} of agent {self.user_id}")

    async def push_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Append an event to the agent's stream (messaging: `message`, `message_status`), stored first."""
        await self._ensure_active()
        await self._emit(kind, payload)
