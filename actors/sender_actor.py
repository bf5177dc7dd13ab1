"""One outbound sender per WhatsApp number (`sender:{phone_number_id}`), over the persisted outbox.

The API stores a message (state `queued`) before answering 202, then wakes this actor; the actor
also re-reads the outbox on activation (after a crash or a restart) and every `_POLL_S`, so a lost
wake-up delays a message but never loses it. Sending:

* per number: evenly spaced slots at the number's rate (80/s by default, a per-number setting up
  to 1,000/s), however many gateways enqueue — there is one actor per number in the cluster;
* per customer: one message in flight at a time, in outbox order (order per conversation), and no
  faster than Meta's pair limit (one every `send_pair_interval_s`) — pacing, not failing;
* every attempt is recorded first (`sending`, attempts+1) and carries the message's idempotency
  key, so a retry after a crash or a lost answer is not sent twice;
* transient failures (timeout, unreachable, 5xx, 130429, 131056, ...) go back to the queue with
  exponential back-off and jitter; permanent ones (131047, 131026, 132000/132001, 190, 100, ...)
  fail the message with Meta's reason, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, deque
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from actors import sender_metrics
from actors.activation import StoreBackedActor
from actors.directory import Directory, spawn, tell_agent_of_events
from actors.pacing import PairGate, RateGate, backoff_s
from config.actor_settings import ActorSettings
from meta.graph_client import GraphAPIError, GraphClient
from store import outbox
from store.agent_store_steps import Told
from store.crypto import SecretBox, resolve_key
from store.routing_repo import append_in_transaction
from store.tables import PhoneNumber, WhatsAppAccount
from store.types import utcnow

log = logging.getLogger(__name__)

# How often the actor re-reads the outbox even without a wake-up (a lost wake-up costs at most this).
_POLL_S = 1.0
# How far back each poll looks for statuses that raced an accept (a webhook's transaction is far shorter).
_PARKED_STATUSES_S = 60.0


class SenderActor(StoreBackedActor):
    def __init__(self, phone_number_id: str, settings: ActorSettings, directory: Directory | None = None) -> None:
        self.phone_number_id = phone_number_id
        self._graph = GraphClient(settings.graph_base_url, timeout_s=settings.send_timeout_s)
        # Given a reference, not the key: resolved here, in the one kind of actor that decrypts.
        self._secrets = SecretBox(resolve_key(settings.secret_key_file))
        self._rate = RateGate(settings.send_rate_per_number)
        self._pairs = PairGate(settings.send_pair_interval_s)
        # recipient -> outbox ids in order; the head is the only one that may be in flight.
        self._queues: dict[str, deque[int]] = {}
        self._due: dict[int, float] = {}
        self._known: set[int] = set()
        self._in_flight: set[str] = set()
        self._tokens: dict[tuple[int, str], str] = {}
        self._wake = asyncio.Event()
        # The outbox is re-read only when something outside may have changed it (a wake-up, the poll).
        self._stale = True
        self._refreshed_at = 0.0
        self._pump: asyncio.Task[None] | None = None
        self.sent_count = 0
        # Organizations whose queue depth was reported: an emptied queue reads 0, not its last figure.
        self._depth_orgs: set[int] = set()
        # Org 0: a number's sender serves every organization whose inbox uses the number.
        super().__init__(0, settings, directory)

    def _exists(self) -> bool:
        return True

    async def _load(self) -> None:
        async with self.db.session() as session:
            rate = await session.scalar(select(PhoneNumber.messages_per_second)
                                        .where(PhoneNumber.phone_number_id == self.phone_number_id))
        if rate:
            self._rate.rate = float(rate)

    async def _on_activated(self) -> None:
        # Kept on the actor: the loop holds tasks weakly.
        self._pump = asyncio.get_running_loop().create_task(self._pump_forever())

    # ------------------------------------------------------------------ API

    async def wake(self) -> dict[str, Any]:
        """New messages are in the outbox (or the number's rate changed): look now."""
        await self._ensure_active()
        self._stale = True
        self._wake.set()
        return {"phone_number_id": self.phone_number_id, "pid": os.getpid()}

    async def forget_tokens(self) -> None:
        """Drop the access tokens read so far: an account's credentials changed (read again on the next send)."""
        self._tokens.clear()

    async def set_rate(self, messages_per_second: float) -> None:
        await self._ensure_active()
        self._rate.rate = messages_per_second

    async def stats(self) -> dict[str, Any]:
        await self._ensure_active()
        return {"pid": os.getpid(), "sent": self.sent_count, "waiting": sum(len(q) for q in self._queues.values()),
                "rate": self._rate.rate}

    # ------------------------------------------------------------------ the pump

    async def _pump_forever(self) -> None:
        while True:
            try:
                if self._stale or time.monotonic() - self._refreshed_at >= _POLL_S:
                    self._stale = False
                    await self._refresh()
                wait = self._dispatch()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(wait, _POLL_S))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sender %s: pump pass failed", self.phone_number_id)
                await asyncio.sleep(0.5)

    async def _refresh(self) -> None:
        """Pick up pending messages from the store (new ones, and ones a retry put back)."""
        self._refreshed_at = time.monotonic()
        async with self.db.session() as session:
            rows = await outbox.pending_for_number(session, self.phone_number_id)
        # Statuses that raced an accept (outbox.apply_parked_statuses), for messages that moved lately.
        async with self.db.session() as session:
            parked = await outbox.apply_parked_statuses(session, self.phone_number_id,
                                                        utcnow() - timedelta(seconds=_PARKED_STATUSES_S))
            told = await self._on_streams(session, parked)
        self._notify(parked, told)
        for row_id, recipient, next_at, _ in rows:
            self._due[row_id] = _monotonic_of(next_at)
            if row_id not in self._known:
                self._known.add(row_id)
                self._queues.setdefault(recipient, deque()).append(row_id)
        # Every pending message of the number was just read: the outbox's depth, at least once per poll.
        waiting = Counter(org_id for *_, org_id in rows)
        sender_metrics.queue_depth(self.phone_number_id, waiting, self._depth_orgs)
        self._depth_orgs.update(waiting)

    def _dispatch(self) -> float:
        """Start every send that may go now; the seconds until the next one could."""
        now = time.monotonic()
        wait = _POLL_S
        for recipient, queue in list(self._queues.items()):
            if not queue:
                del self._queues[recipient]
                continue
            if recipient in self._in_flight:
                continue
            head = queue[0]
            ready = max(self._due.get(head, now), self._pairs.ready_at(recipient))
            if ready > now:
                wait = min(wait, ready - now)
                continue
            self._pairs.sent(recipient, now)
            self._in_flight.add(recipient)
            spawn(self._send(recipient, head), f"sender {self.phone_number_id} message {head}")
        return max(wait, 0.001)

    async def _send(self, recipient: str, outbound_id: int) -> None:
        done = False
        try:
            done = await self._attempt(outbound_id, recipient)
        except Exception:
            log.exception("sender %s: message %s attempt crashed; retrying", self.phone_number_id, outbound_id)
            self._due[outbound_id] = time.monotonic() + 1.0
        finally:
            self._in_flight.discard(recipient)
            if done:
                queue = self._queues.get(recipient)
                if queue and queue[0] == outbound_id:
                    queue.popleft()
                self._due.pop(outbound_id, None)
                # `_known` keeps the id: a stale read of the outbox must not queue it again.
            self._wake.set()

    async def _attempt(self, outbound_id: int, recipient: str) -> bool:
        """One send; True when the message left the outbox (accepted or failed for good)."""
        async with self.db.session() as session:
            message = await outbox.mark_sending(session, outbound_id)
            if message is None:
                return True  # no longer pending (sent by an earlier incarnation, or failed)
            org_id, waba_id = message.org_id, message.waba_id
            payload, key, attempts = dict(message.payload), message.idempotency_key, message.attempts
        try:
            token = await self._token(org_id, waba_id)
            # The number's rate slot is taken right before the request, so the pace holds on the wire
            # whatever the store's latency was; the pair gate counts from the same moment.
            slot = self._rate.reserve(time.monotonic())
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            self._pairs.sent(recipient, time.monotonic())
            answer = await self._graph.send_message(self.phone_number_id, token, payload, idempotency_key=key)
        except GraphAPIError as error:
            return await self._failed(org_id, outbound_id, attempts, error)
        wamid = _wamid_of(answer)
        async with self.db.session() as session:
            changes = await outbox.mark_accepted(session, outbound_id, wamid)
            told = await self._on_streams(session, changes)
        self.sent_count += 1
        sender_metrics.sent(org_id, self.phone_number_id)
        self._notify(changes, told)
        return True

    async def _failed(self, org_id: int, outbound_id: int, attempts: int, error: GraphAPIError) -> bool:
        title = error.message
        transient = error.code is None or error.retryable
        if transient and attempts < self._settings.send_max_attempts:
            delay = backoff_s(attempts, self._settings.send_retry_base_s, self._settings.send_retry_max_s)
            log.info("sender %s: message %s attempt %d failed (%s); retry in %.2fs", self.phone_number_id,
                     outbound_id, attempts, error, delay)
            async with self.db.session() as session:
                await outbox.mark_retry(session, outbound_id, delay, error.code, title, error.details)
            sender_metrics.retried(org_id, self.phone_number_id, error)
            self._due[outbound_id] = time.monotonic() + delay
            return False
        if error.is_auth_error:
            self._tokens.clear()  # a relinked account brings a new token
        async with self.db.session() as session:
            change = await outbox.mark_failed(session, outbound_id, error.code, title, error.details)
            changes = [change] if change is not None else []
            told = await self._on_streams(session, changes)
        if change is not None:  # None: no longer pending, another attempt ended it (and counted it)
            sender_metrics.failed(org_id, self.phone_number_id, error)
        self._notify(changes, told)
        return True

    async def _token(self, org_id: int, waba_id: str) -> str:
        token = self._tokens.get((org_id, waba_id))
        if token is None:
            async with self.db.session() as session:
                encrypted = await session.scalar(select(WhatsAppAccount.access_token_enc).where(
                    WhatsAppAccount.org_id == org_id, WhatsAppAccount.waba_id == waba_id))
            if encrypted is None:
                raise GraphAPIError(401, "the WhatsApp account is no longer linked to the organization", code=190)
            token = self._tokens[(org_id, waba_id)] = self._secrets.decrypt(encrypted)
        return token

    @staticmethod
    async def _on_streams(session: AsyncSession, changes: list[outbox.StatusChange]) -> Told:
        """Each change's status on the stream of the agent who wrote the message, in the commit that makes it, in
        order (as the intake appends the statuses it applies): a stream never shows an older status after a newer
        one, whichever commit applied it."""
        return await append_in_transaction(
            session, [(change.org_id, (change.agent_id, "message_status", change.event())) for change in changes
                      if change.agent_id is not None])

    def _notify(self, changes: list[outbox.StatusChange], told: Told) -> None:
        """Tell each agent who wrote a message how it went: the events its stream shows from the commit (fire and
        forget: the store has them)."""
        org_of = {change.agent_id: change.org_id for change in changes if change.agent_id is not None}
        for agent_id, events in told.items():
            spawn(tell_agent_of_events(self.directory, org_of[agent_id], agent_id, events),
                  f"message_status to agent {agent_id}")


def _wamid_of(answer: dict[str, Any]) -> str:
    messages = answer.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
        return str(messages[0]["id"])
    raise GraphAPIError(502, "Graph API accepted the message without a message id")


def _monotonic_of(at: datetime) -> float:
    return time.monotonic() + (at - utcnow()).total_seconds()
