"""An agent's offers and assignments: holds reserved for inboxes, shown, confirmed as work, released, ended.

Offers are reservations (Twilio TaskRouter's model): an inbox asks to `hold` an offer id, commits the offer to
the store, then `publish`es it, and later `confirm`s or `release`s it. Every call names the offer or transaction
id and is idempotent, so an inbox may retry any of them after a lost reply. A hold the inbox never follows up
lapses by itself at `expires_at`, and `resync` rebuilds what the agent holds from the store, the single truth.

The inbox writes the offer, the assignment (with its messages) and the end on the agent's stream in its own
commits (`store.agent_streams`): `publish`, `confirm`, `deliver` and `end` take those events as the commit tells
them (read from the stream only when they do not follow what the agent knows), each changes memory, and the agent
writes only what the stream lacks (an offer withdrawn because its hold lapsed, a reset of its missed offers, a
delivery handed over by a restarted inbox).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from actors import inbox_metrics
from actors.agent_core import AgentCore, log, remember
from actors.agent_holds import Hold, rescinded, stored_offer
from routing.presence import after_missed_offer, missed_reason
from store.agent_store_steps import LinkedEvent
from store.clock import utcnow

# After `expires_at` the inbox's own timer normally ends the offer; the agent's lapse waits a little
# longer so a confirm committed just before expiry is not beaten by it.
HOLD_LAPSE_GRACE_S = 2.0
# A hold the store does not show yet may still be in its inbox's commit: resync keeps it this long.
UNCOMMITTED_HOLD_GRACE_S = 5.0
# How long a claim's or transfer's hold may wait for its inbox's commit.
DIRECT_HOLD_S = 15.0


class AgentOffers(AgentCore):
    """What inboxes ask of the agent about their conversations: each call one step, idempotent on its id."""

    # ------------------------------------------------------------------ offers and assignments

    async def hold(self, offer: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        """Reserve capacity for an offer (or a claim/transfer when `direct`); idempotent on the offer id.

        Nothing is written: the inbox commits the offer next, and a hold it never follows up lapses.
        """
        inbox_id = int(offer["inbox_id"])
        if not await self._ensure_active():
            return {"ok": False, "reason": "agent not found", "snapshot": self._answer(inbox_id)}
        self._heard_from(inbox_id)
        async with self._step_lock:
            offer_id = offer["offer_id"]
            if offer_id in self.holds:
                return {"ok": True, "reason": None, "snapshot": self._answer(inbox_id)}
            refusal = self._hold_refusal(offer_id, direct)
            if refusal is not None:
                return {"ok": False, "reason": refusal, "snapshot": self._answer(inbox_id)}
            hold = Hold(offer=offer, direct=direct, held_at=time.monotonic())
            if direct:
                hold.offer = {**offer, "expires_at": (utcnow() + timedelta(seconds=DIRECT_HOLD_S)).isoformat()}
            self.holds[offer_id] = hold
            self._arm_lapse(hold)
            return {"ok": True, "reason": None, "snapshot": self._answer(inbox_id)}

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

    async def publish(self, offer: dict[str, Any], told: list[LinkedEvent] | None = None) -> dict[str, Any]:
        """The inbox committed the offer, and with it the offer's event on the stream (`told`: as its commit stored
        it): the hold is shown (no write; idempotent on the offer id). A hold that lapsed before this came has its
        offer withdrawn."""
        await self._ensure_active()
        async with self._step_lock:
            await self._take_told(told)
            offer_id = offer["offer_id"]
            hold = self.holds.get(offer_id)
            if hold is not None:
                hold.offer = offer
                hold.published = True
                return self._answer(int(offer["inbox_id"]))
            # The hold lapsed: what the stream shows of the offer now decides, so its newest events are read (the
            # inbox may have committed the offer's end after the told commit).
            await self._catch_up()
            if self._shown_ringing(offer_id):
                await self._commit(events=[("offer_rescinded", rescinded(offer, "expired"))])
            return self._answer(int(offer["inbox_id"]))

    def _shown_ringing(self, offer_id: str) -> bool:
        """Whether the stream's latest event of the offer shows it (no rescind or assignment after it)."""
        latest = None
        for event in self._recent:
            if event.get("offer_id") == offer_id:
                latest = event["type"]
        return latest == "offer"

    async def confirm(self, offer_id: str, payload: dict[str, Any],
                      told: list[LinkedEvent] | None = None) -> dict[str, Any]:
        """The inbox committed the assignment (accepted, claimed or transferred) and, with it, the assignment's
        event on the stream (`store.agent_streams`; `told`: the events that commit appended): the hold becomes active
        work. Nothing is written, and nothing read when the told events follow the newest one known.

        The stream is the truth: a hold that lapsed meanwhile does not stop it, and a conversation the stream shows
        ended since (a retried confirm coming after the close, or one after the agent's restart) is not taken on
        again. A close the agent does not know of yet is on its way: the inbox tells its `end` after this confirm
        (its mailbox keeps the order), and that frees the capacity.
        """
        await self._ensure_active()
        async with self._step_lock:
            if offer_id in self._confirmed:
                return self._answer(int(payload["inbox_id"]))  # a retry of a confirm whose answer was slow
            await self._take_told(told)
            hold = self.holds.get(offer_id)
            if hold is not None:
                self._drop_hold(hold)
            remember(self._finished_offers, offer_id)
            remember(self._confirmed, offer_id)
            if payload.get("kind", "accepted") == "accepted" and self.missed_in_a_row:
                await self._commit(state={"missed_in_a_row": 0})
                self.missed_in_a_row = 0
            tx_id, inbox_id = int(payload["transaction_id"]), int(payload["inbox_id"])
            if tx_id not in self._shown_open:
                return self._answer(inbox_id)  # ended since (the stream shows it): no work taken on
            self.active[tx_id] = inbox_id
        self._notify_inboxes(answered=inbox_id)
        return self._answer(inbox_id)

    async def release(self, offer_id: str, reason: str) -> dict[str, Any]:
        """The inbox ended the offer (missed, declined, rescinded). Missing too many in a row sets the agent away."""
        await self._ensure_active()
        async with self._step_lock:
            hold = self.holds.get(offer_id)
            if hold is None:
                remember(self._finished_offers, offer_id)
                return self._answer(None)
            if not hold.published:
                await self._catch_up()  # the inbox's commit may have shown it with its publish still on the way
            events = [("offer_rescinded", rescinded(hold.offer, reason))] if hold.published else []
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
        return self._answer(hold.inbox_id)

    async def end(self, transaction_id: int, reason: str, at: str | None = None,
                  told: list[LinkedEvent] | None = None) -> dict[str, Any]:
        """Closed or transferred away: capacity frees and the idle clock starts at `at` (idempotent).

        The inbox's commit wrote the event on the stream and the idle clock's start (`store.agent_streams`; `told`:
        the event as it stored it): the agent takes it, and writes only what the stream lacks (a caller that did not
        write it: no `at`)."""
        await self._ensure_active()
        async with self._step_lock:
            await self._take_told(told)
            ended_at = datetime.fromisoformat(at) if at else utcnow()
            inbox_id = self.active.get(transaction_id, self._shown_open.get(transaction_id))
            if transaction_id in self._shown_open and inbox_id is not None:
                kind = "transaction_closed" if reason == "closed" else "transferred"
                state = {"last_chat_end_at": ended_at} if transaction_id in self.active else None
                await self._commit(state=state, events=[(kind, {
                    "transaction_id": transaction_id, "inbox_id": inbox_id, "reason": reason,
                    "direction": "away" if kind == "transferred" else None})])
            if transaction_id not in self.active:
                # Ended before (a retry, or a reload read the store after the commit).
                return self._answer(inbox_id)
            inbox_id = self.active.pop(transaction_id)
            self.last_chat_end_at = ended_at
        self._notify_inboxes(answered=inbox_id)
        return self._answer(inbox_id)

    async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]],
                      told: list[LinkedEvent] | None = None) -> None:
        """New customer messages of active transactions, (transaction id, its messages) in order, in one
        commit; a message already delivered with its transaction is skipped, and so is one the store no longer
        shows attached to it (the conversation's close handed it on before this commit). `told`: the events of
        those a commit (the intake's, the inbox's) showed on the stream already, as it stored them."""
        await self._ensure_active()
        async with self._step_lock:
            def undelivered() -> bool:
                return any((int(tx_id), int(m["id"])) not in self._delivered
                           for tx_id, messages in deliveries for m in messages)

            # Follow-ups a commit showed are on the stream already: taken as told, else read; not written. Any not
            # told may be on the stream too (a commit whose tell is still on its way): read before writing them.
            if undelivered() and not await self._take_told(told) and undelivered():
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
            return self._answer(None)
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
            events = [("offer_rescinded", rescinded(h.offer, "withdrawn by the inbox")) for h in stale if h.published]
            events += [("offer", stored_offer(o)) for o in new if not self._shown_ringing(o.offer_id)]
            events += self._stream_catch_up(active)
            if events:
                await self._commit(events=events)
            for hold in stale:
                self._drop_hold(hold)
            for offer in new:
                hold = Hold(offer=stored_offer(offer), direct=False, held_at=now, published=True)
                self.holds[offer.offer_id] = hold
                self._arm_lapse(hold)
            self.active = active
        if events or changed_work:
            self._notify_inboxes()
        return self._answer(None)  # its caller is an inbox this agent does not name

    async def read_stream(self, told: list[LinkedEvent] | None = None) -> None:
        """Another actor's commit appended events to the stream (the intake: a follow-up of a conversation this agent
        holds, a reply's delivery status): take them as told (or read them), and show them to the stream's readers.
        Writes nothing; safe to repeat."""
        await self._ensure_active()
        async with self._step_lock:
            await self._take_told(told)
        # The intake told this agent, not the inbox, of those follow-ups: they count among the inbox's routed messages.
        for inbox_id, count in Counter(int(event[3]["inbox_id"]) for event in told or ()
                                       if event[2] == "message").items():
            inbox_metrics.routed(self.org_id, inbox_id, count)

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
        remember(self._finished_offers, offer_id)
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
                    await self._commit(events=[("offer_rescinded", rescinded(hold.offer, "expired"))])
                self._drop_hold(hold)
            self._notify_inboxes()
        except Exception:
            log.exception("lapse of offer %s failed; retrying", offer_id)
            self._lapse_timers[offer_id] = asyncio.ensure_future(self._lapse_after(offer_id, 1.0))
