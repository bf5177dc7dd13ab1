"""An agent's presence: its view, status and capacity, telling the inboxes it serves, and idle deactivation."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import ray

from actors.agent_core import AgentCore, log
from actors.agent_holds import Hold, rescinded
from actors.free_heap import release_free_heap
from actors.mailbox import Mailbox
from routing import orders_by_idle
from store.clock import utcnow

# An agent without a call or a step for this long gives the heap its work freed back (`actors/free_heap.py`).
QUIET_AFTER_S = 5.0
# The inboxes the agent serves are read from the store at most this often. Changes are heard sooner: an inbox
# that gains the agent tells it to resync, a call from an inbox not among them and a push an inbox answers with
# "not a member" (the agent left it, or it was deleted) read them again at once (see `_served_inboxes`).
SERVED_INBOXES_TTL_S = 600.0


def routing_key(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    """What of a snapshot routing decides on (`routing.model.AgentSnapshot`: eligible means available, under
    capacity and no offer ringing; Longest Idle skips busy agents and orders the others by `idle_since`). Two
    snapshots with the same key route alike, whatever their exact counts."""
    active, limit = snapshot["active_count"], snapshot["max_concurrent"]
    return (snapshot["status"], limit, active >= limit, active > 0, snapshot["has_pending_offer"],
            snapshot["idle_since"] if active == 0 else None)


def must_hear(told: tuple[Any, ...] | None, key: tuple[Any, ...], idle_matters: bool = True) -> bool:
    """Whether an inbox whose last snapshot from this agent has routing key `told` must be pushed one with `key`.

    Yes when the inbox may now offer where it would not have: the agent under capacity again, no longer ringing,
    its presence or capacity changed, or (to an inbox whose mode orders by idle time: `idle_matters`) idle again or
    idle since another time. A change that only makes the agent less eligible (an offer ringing, a conversation
    taken on, capacity reached) is not pushed: an inbox acting on what it knew asks for a hold, which the agent
    refuses, or whose answer shows it busy to a Longest Idle inbox (`actors.inbox_routing`), and that answer carries
    the new snapshot. Under the benchmark's workload this halves the pushes (0.22 → 0.11 actor calls per message),
    and leaving idle time to the inboxes that order by it halves them again."""
    if told is None:
        return True
    status, limit, full, busy, ringing, idle_since = key
    was_status, was_limit, was_full, was_busy, was_ringing, was_idle_since = told
    if status != was_status or limit != was_limit or (was_full and not full) or (was_ringing and not ringing):
        return True
    return idle_matters and ((was_busy and not busy) or (not busy and idle_since != was_idle_since))


class AgentPresence(AgentCore):
    """What the agent shows and sets, and how the inboxes it serves hear of it."""

    # ------------------------------------------------------------------ view

    async def view(self) -> dict[str, Any] | None:
        if not await self._ensure_active():
            return None
        return self._view()

    def _view(self) -> dict[str, Any]:
        idle = self._idle_since()
        ringing = self._ringing()
        pending = None
        # An offer of a conversation still being opened has no transaction id until its inbox's commit shows it.
        if ringing is not None and ringing.offer.get("transaction_id") is not None:
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
        events += [("offer_rescinded", rescinded(h.offer, f"agent {status}")) for h in withdrawn if h.published]
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
        """Push the newest snapshot to every inbox the agent serves whose routing it changes (retried; only the
        newest is kept).

        `answered`: the inbox whose call this step answers. The answer carries the snapshot, which that
        inbox absorbs whenever it arrives (`AgentLink.tell`), so it is not pushed there too. An inbox whose last
        snapshot from this agent routes as the new one does (`routing_key`: one more chat under capacity, say)
        is not told either, nor one for which the change only makes the agent less eligible (`must_hear`): a push
        is an actor call, and most capacity changes of a busy agent change nothing its other inboxes decide on.
        """
        self._notifying = asyncio.ensure_future(self._push_snapshot(answered))
        self._notifying.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _answer(self, inbox_id: int | None) -> dict[str, Any]:
        """The snapshot an inbox's call is answered with, which that inbox then routes on (its mailbox retries the
        call until the answer arrives). `None`: the calling inbox is not known here, so what any inbox knows is no
        longer assumed (each hears of the next change)."""
        snapshot = self.snapshot()
        if inbox_id is None:
            self._told_keys.clear()
        else:
            self._told_keys[inbox_id] = routing_key(snapshot)
        return snapshot

    def _heard_from(self, inbox_id: int) -> None:
        """An inbox called: one the cached list does not know (the agent just joined it) is read anew."""
        if self._inboxes is not None and inbox_id not in self._inboxes[0]:
            self._inboxes = None

    async def _served_inboxes(self) -> dict[int, str]:
        """The inboxes the agent serves and their assignment modes, off the message path: read again after
        `SERVED_INBOXES_TTL_S`, after a resync (an inbox that gained the agent, or whose mode now orders by idle
        time, tells it so: `actors.inbox_events`), a call from an inbox not among them, or a push an inbox answered
        "not a member"."""
        now = time.monotonic()
        if self._inboxes is None or now - self._inboxes[1] > SERVED_INBOXES_TTL_S:
            self._inboxes = (await self.store.served_inboxes(self.user_id), now)
        return self._inboxes[0]

    async def _push_snapshot(self, answered: int | None) -> None:
        served = await self._served_inboxes()
        snapshot = self.snapshot()
        key = routing_key(snapshot)
        for inbox_id, mode in served.items():
            if inbox_id == answered or not must_hear(self._told_keys.get(inbox_id), key, orders_by_idle(mode)):
                continue
            self._told_keys[inbox_id] = key
            pushed = self._mailbox(inbox_id).post("agent_changed", snapshot, key="snapshot")
            pushed.add_done_callback(functools.partial(self._push_ended, inbox_id))

    def _push_ended(self, inbox_id: int, pushed: asyncio.Future[Any]) -> None:
        """A push the inbox never got (its mailbox gave up): what it knows is no longer assumed. A push the inbox
        answered "not a member": the cached list of inboxes served is stale, and is read again at the next push."""
        if pushed.cancelled() or pushed.exception() is not None:
            self._told_keys.pop(inbox_id, None)
        elif pushed.result() is False:
            self._told_keys.pop(inbox_id, None)
            if self._inboxes is not None and inbox_id in self._inboxes[0]:
                self._inboxes = None

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
