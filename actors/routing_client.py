"""The gateway's side of routing: forwards stored messages to inbox actors and relays API actions.

Messages are in the store before they reach this class, so a forward that fails (actor restarting,
gateway stopping) loses nothing. Three paths lead every stored message to its inbox: the forward
(retried on any failure), the inbox actor's activation (it attaches what it finds unattached; every inbox
is activated when the gateway starts), and this gateway's sweep of the store every few seconds
(`actors.inbox_sweep`: one read for every inbox; an inbox whose message stayed unattached from one sweep
to the next is told to read it, which activates its actor if none is alive). The same sweep tells an
inbox of a configuration change or a newer owner it may have missed.

A follow-up of a conversation an agent holds, and a reply's delivery status, are on the agent's stream from the
intake's commit: the agent is only told to read them (`tell_to_read`, no inbox in between), through the same
per-actor forwarders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import select

from actors.directory import ActorUnavailable, Directory, push_agent_event
from actors.inbox_sweep import InboxSweep, InboxTold, InboxWatched
from actors.messages import StoredMessage
from store import inbox_ownership, outbox
from store.agent_store_steps import LinkedEvent
from store.db import Database
from store.tables import Inbox

log = logging.getLogger(__name__)

# Delivery attempts of one batch to an inbox actor before leaving it to the recovery paths.
_FORWARD_ATTEMPTS = 12
# How often the gateway wakes the senders of numbers with messages still in the outbox.
_RECOVERY_INTERVAL_S = 10.0
# How long a sweep waits for an inbox's answer (its actor may be starting); unanswered, it is told again next sweep.
_SWEEP_CALL_TIMEOUT_S = 10.0
# How long creating an inbox waits for its actor to run. A busy cluster may take longer to start a process: the
# inbox is created all the same, and its actor goes on starting (its first message finds it).
_ACTIVATION_AT_CREATION_S = 10.0


class RoutingClient:
    def __init__(self, directory: Directory, db: Database, sweep_interval_s: float = 2.0) -> None:
        self.directory = directory
        self._db = db
        self._sweep_interval_s = sweep_interval_s
        self._sweep = InboxSweep()
        self._queue: asyncio.Queue[tuple[int, StoredMessage]] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        # One forwarder task per actor with work, ("inbox" | "agent", org id, inbox or user id): an inbox's
        # messages go in order, actors independently.
        self._waiting: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self._forwarders: dict[tuple[str, int, int], asyncio.Task[None]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="wa-router-dispatcher")
        # Every inbox is live before the first webhook: no customer waits for an actor process to start.
        await self.activate_every_inbox()
        await self.recover_senders()
        self._recovery = asyncio.create_task(self._recover_forever(), name="wa-router-recovery")
        self._sweeping = asyncio.create_task(self._sweep_forever(), name="wa-router-inbox-sweep")

    async def recover_senders(self) -> int:
        """Wake the sender of every number with messages still in the outbox (accepted, not yet sent)."""
        async with self._db.session() as session:
            numbers = await outbox.numbers_with_pending(session)
        results = await asyncio.gather(*(self.directory.sender(n).wake() for n in numbers), return_exceptions=True)
        for number, result in zip(numbers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("sender %s did not activate: %s", number, result)
        return len(numbers)

    async def stop(self) -> None:
        for task in (self._dispatcher, self._recovery, self._sweeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._forwarders.values()):
            task.cancel()

    async def _recover_forever(self) -> None:
        # A control loop that never dies.
        while True:
            await asyncio.sleep(_RECOVERY_INTERVAL_S)
            try:
                await self.recover_senders()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery pass failed")

    async def _sweep_forever(self) -> None:
        # A control loop that never dies.
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox sweep failed")

    async def sweep(self) -> list[InboxTold]:
        """One pass of the sweep (`actors.inbox_sweep`): one read, then the inboxes it concerns told; those told."""
        async with self._db.session() as session:
            rows = await inbox_ownership.inboxes_watched(session)
        due = self._sweep.due(InboxWatched(*row) for row in rows)
        results = await asyncio.gather(*(self._tell_watched(told) for told in due), return_exceptions=True)
        answered = []
        for told, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("inbox %s:%s not told what the store holds: %r", told.org_id, told.inbox_id, result)
            else:
                self._sweep.told(told)
                answered.append(told)
        return answered

    async def _tell_watched(self, told: InboxTold) -> None:
        if told.unattached:
            inbox = self.directory.inbox(told.org_id, told.inbox_id)  # messages wait: its actor starts if none runs
        else:
            inbox = await asyncio.to_thread(self.directory.inbox_if_running, told.org_id, told.inbox_id)
            if inbox is None:
                return  # none runs: whichever starts loads the configuration and takes the inbox from the store
        await asyncio.wait_for(inbox.store_watched(told.config_version, told.owner_epoch, told.unattached),
                               _SWEEP_CALL_TIMEOUT_S)

    async def activate_every_inbox(self) -> int:
        """Activate every inbox of the store: an activation re-arms offer timers and attaches what is unattached; a
        live actor just answers. How many."""
        async with self._db.session() as session:
            rows = (await session.execute(select(Inbox.org_id, Inbox.id))).all()
        results = await asyncio.gather(*(self.directory.inbox(org, inbox).activate() for org, inbox in rows),
                                       return_exceptions=True)
        for (org, inbox), result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("inbox %s:%s did not activate: %s", org, inbox, result)
        return len(rows)

    # ------------------------------------------------------------------ inbound messages

    def submit_messages(self, org_id: int, messages: list[StoredMessage]) -> None:
        for message in messages:
            self._queue.put_nowait((org_id, message))

    def tell_to_read(self, org_id: int, user_id: int, told: list[LinkedEvent] | None) -> None:
        """The agent's stream has events another commit appended (a reply's delivery status, at intake): the agent is
        told them as stored (`told`), or to read its stream (tells waiting behind one on the wire go as one)."""
        self._put(("agent", org_id, user_id), [{"told": told}])

    async def _dispatch_forever(self) -> None:
        # A control loop that never dies: every failure is logged and the loop goes on.
        while True:
            try:
                first = await self._queue.get()
                batch = [first]
                while not self._queue.empty() and len(batch) < 500:
                    batch.append(self._queue.get_nowait())
                by_inbox: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
                for org_id, message in batch:
                    by_inbox[("inbox", org_id, message.inbox_id)].append(asdict(message))
                # Not awaited here: an actor that is restarting (its forward retries for seconds) must not hold
                # up every other inbox's messages.
                for key, msgs in by_inbox.items():
                    self._put(key, msgs)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher pass failed")

    def _put(self, key: tuple[str, int, int], entries: list[dict[str, Any]]) -> None:
        self._waiting.setdefault(key, []).extend(entries)
        if key not in self._forwarders:
            self._forwarders[key] = asyncio.create_task(self._forward_waiting(key),
                                                        name=f"wa-router-forward-{'-'.join(map(str, key))}")

    async def _forward_waiting(self, key: tuple[str, int, int]) -> None:
        """Forward the actor's waiting messages (or reads), batch after batch, until none are left."""
        kind, org_id, actor_id = key
        try:
            while batch := self._waiting.pop(key, None):
                try:
                    if kind == "inbox":
                        await self._forward(org_id, actor_id, batch)
                    else:
                        # Told together; one tell without its events has the agent read its stream instead.
                        told = [event for entry in batch for event in entry["told"] or ()]
                        await self._tell_to_read(org_id, actor_id,
                                                 told if all(entry["told"] for entry in batch) else None)
                except Exception:
                    log.exception("forwarding to %s %s:%s failed", *key)
        finally:
            del self._forwarders[key]

    async def _forward(self, org_id: int, inbox_id: int, messages: list[dict[str, Any]]) -> None:
        # The messages are stored: trying again is always safe (ingest is idempotent); given up, the gateways'
        # sweep has the inbox attach them (`actors.inbox_sweep`).
        await self._retried(f"inbox {org_id}:{inbox_id}",
                            lambda: self.directory.inbox(org_id, inbox_id).ingest(messages))

    async def _tell_to_read(self, org_id: int, user_id: int, told: list[LinkedEvent] | None) -> None:
        # Safe to repeat; given up, the events are still on the agent's stream: its readers find them when the
        # agent next reads it, or when a stream opens.
        await self._retried(f"agent {org_id}:{user_id}",
                            lambda: self.directory.agent(org_id, user_id).read_stream(told))

    async def _retried(self, actor: str, call: Callable[[], Awaitable[Any]]) -> None:
        delay = 0.05
        for _attempt in range(_FORWARD_ATTEMPTS):
            try:
                await call()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("forward to %s failed (%s); retrying", actor, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.error("%s kept failing; its messages wait in the store for the recovery paths", actor)

    # ------------------------------------------------------------------ configuration changes

    async def inbox_created(self, org_id: int, inbox_id: int) -> None:
        """Start the new inbox's actor now, so its first customer does not wait for a process to start."""
        try:
            await asyncio.wait_for(self.directory.inbox(org_id, inbox_id).activate(), _ACTIVATION_AT_CREATION_S)
        except (ActorUnavailable, TimeoutError) as exc:
            # The first message (or the sweep) activates it.
            log.warning("inbox %s:%s not activated at creation: %r", org_id, inbox_id, exc)

    async def inboxes_changed(self, org_id: int, inbox_ids: list[int]) -> None:
        for inbox_id in sorted(set(inbox_ids)):
            try:
                await self.directory.inbox(org_id, inbox_id).config_changed()
            except ActorUnavailable as exc:
                # It reloads its configuration from the store when it activates again.
                log.warning("inbox %s:%s not told of its new configuration: %s", org_id, inbox_id, exc)

    async def inbox_deleted(self, org_id: int, inbox_id: int) -> None:
        self.directory.forget_inbox(org_id, inbox_id)

    async def agent_deleted(self, org_id: int, user_id: int, inbox_ids: list[int]) -> None:
        self.directory.forget_agent(org_id, user_id)
        await self.inboxes_changed(org_id, inbox_ids)

    # ------------------------------------------------------------------ relays

    def inbox(self, org_id: int, inbox_id: int) -> Any:
        return self.directory.inbox(org_id, inbox_id)

    def agent(self, org_id: int, user_id: int) -> Any:
        return self.directory.agent(org_id, user_id)

    async def push_event(self, org_id: int, user_id: int, kind: str, payload: dict[str, Any]) -> None:
        await push_agent_event(self.directory, org_id, user_id, kind, payload)

    def sender(self, phone_number_id: str) -> Any:
        return self.directory.sender(phone_number_id)
