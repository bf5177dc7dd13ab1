"""An inbox actor's side of its agents: their newest snapshots, calls with deadlines, ordered retried follow-ups.

Snapshots are ordered by the agent's (activation epoch, sequence), never by a clock. A call the
inbox's step needs the answer of has a deadline; an agent that misses it is skipped for a moment,
not taken for offline. Every other call is a follow-up posted to the agent's mailbox: delivered in
order, retried until it arrives (each is idempotent on its id), and its answer — the agent's new
snapshot — is absorbed when it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from actors.directory import ActorUnavailable, Directory
from actors.lazy_store import lazy_module
from actors.mailbox import Letter, Mailbox, MailboxGaveUp
from config.actor_settings import ActorSettings
from routing import AgentSnapshot

if TYPE_CHECKING:
    from store import routing_repo as repo
    from store.agent_store_steps import LinkedEvent
else:
    repo = lazy_module("store.routing_repo")  # see actors.lazy_store

log = logging.getLogger(__name__)

# The snapshot fields routing decides on; a snapshot that changes none of them is no event.
ROUTING_FIELDS = ("status", "max_concurrent", "active_count", "has_pending_offer", "idle_since")
# An agent whose actor did not answer in time is skipped for a while, then tried again; the wait doubles
# while it keeps not answering (a dead or hung agent must not cost every decision a full deadline).
UNREACHABLE_BACKOFF_S = 1.0
UNREACHABLE_BACKOFF_MAX_S = 30.0
# Follow-ups are retried this long, then the agent is asked to reconcile with the store instead.
GIVE_UP_AFTER_S = 120.0


def _version(snapshot: dict[str, Any] | None) -> tuple[int, ...]:
    return tuple((snapshot or {}).get("version") or (0, 0))


def _join_deliveries(queued: tuple[Any, ...], newer: tuple[Any, ...]) -> tuple[Any, ...]:
    inbox_id, deliveries, told = queued
    return inbox_id, deliveries + newer[1], ((told or []) + (newer[2] or [])) or None


class AgentLink:
    def __init__(self, org_id: int, inbox_id: int, settings: ActorSettings, directory: Callable[[], Directory],
                 on_change: Callable[[], None]) -> None:
        self._org_id = org_id
        self._inbox_id = inbox_id
        self._settings = settings
        self._directory = directory
        # Called when an agent's snapshot changed what routing decides on (the inbox asks for a pass).
        self._on_change = on_change
        self._members: frozenset[int] = frozenset()
        self.snapshots: dict[int, dict[str, Any]] = {}
        # user id -> (skipped until, current backoff)
        self._unreachable: dict[int, tuple[float, float]] = {}
        self._mailboxes: dict[int, Mailbox] = {}
        # Follow-ups told and not yet answered, with the time their wait ends: a routing pass decides once their
        # new snapshots are in (or that time has passed).
        self._unanswered: dict[asyncio.Future[Any], float] = {}

    def load(self, members: frozenset[int], stored: dict[int, dict[str, Any]]) -> None:
        """The inbox's members and their snapshots as the store has them; a newer live one is kept."""
        self._members = members
        fresh = {}
        for user_id, snapshot in stored.items():
            live = self.snapshots.get(user_id)
            # A snapshot the agent pushed carries a version; one read from the store does not.
            fresh[user_id] = live if live is not None and live.get("version") else snapshot
        self.snapshots = fresh

    def update(self, snapshot: dict[str, Any]) -> bool:
        """Keep the newest snapshot of a member; True when it changes what routing decides on."""
        user_id = snapshot["user_id"]
        if user_id not in self._members:
            return False
        current = self.snapshots.get(user_id)
        if current is not None and _version(snapshot) < _version(current):
            return False
        self.snapshots[user_id] = snapshot
        self._unreachable.pop(user_id, None)
        if snapshot.get("status") != "offline":
            # The agent's handle before its first offer, not on a customer's path: this process's first one
            # costs tens of milliseconds (the agent's class is shipped), each one after a few.
            self._directory().agent(self._org_id, user_id)
        return current is None or any(current.get(key) != snapshot.get(key) for key in ROUTING_FIELDS)

    def routing_view(self, members: dict[int, tuple[int, bool]]) -> tuple[AgentSnapshot, ...]:
        """The members as routing sees them now; an unreachable agent counts as offline for a moment."""
        now = time.monotonic()
        view = []
        for user_id, (proficiency, licensed) in members.items():
            state = self.snapshots.get(user_id) or repo.agent_snapshot(None, user_id, 0, False)
            idle = state.get("idle_since")
            unreachable = self._unreachable.get(user_id, (0.0, 0.0))[0] > now
            view.append(AgentSnapshot(
                user_id=user_id, order_key=user_id, status="offline" if unreachable else state["status"],
                active_count=state["active_count"], max_concurrent=state["max_concurrent"],
                has_pending_offer=state["has_pending_offer"], proficiency=proficiency,
                idle_since=datetime.fromisoformat(idle) if idle else None, licensed=licensed,
            ))
        return tuple(view)

    def status_of(self, user_id: int) -> str | None:
        snapshot = self.snapshots.get(user_id)
        return None if snapshot is None else str(snapshot["status"])

    async def call(self, user_id: int, method: str, *args: Any) -> Any:
        """A call whose answer the step needs now, with a deadline; None if the agent did not answer."""
        try:
            return await asyncio.wait_for(getattr(self._directory().agent(self._org_id, user_id), method)(*args),
                                          self._settings.actor_call_timeout_s)
        except (ActorUnavailable, TimeoutError) as exc:
            previous = self._unreachable.get(user_id, (0.0, 0.0))[1]
            backoff = min(max(UNREACHABLE_BACKOFF_S, 2 * previous), UNREACHABLE_BACKOFF_MAX_S)
            log.warning("agent %s did not answer %s (%s); skipped for %.0fs", user_id, method,
                        type(exc).__name__, backoff)
            self._unreachable[user_id] = (time.monotonic() + backoff, backoff)
            asyncio.get_running_loop().call_later(backoff, self._on_change)
            return None

    def tell(self, user_id: int, method: str, *args: Any) -> asyncio.Future[Any]:
        """A follow-up the step does not wait for: in order, retried; its answer (a snapshot) is absorbed."""
        result = self._mailbox(user_id).post(method, *args)

        def absorb(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            answer = future.result()
            if isinstance(answer, dict) and "version" in answer and self.update(answer):
                self._on_change()

        result.add_done_callback(absorb)
        if not result.done():
            self._unanswered[result] = time.monotonic() + self._settings.actor_call_timeout_s
            result.add_done_callback(lambda done: self._unanswered.pop(done, None))
        return result

    async def settle(self) -> None:
        """Wait for the follow-ups told so far, each until its own deadline: the next decision sees the agents as
        they answered (free again after a release, set away after missed offers), not as they were before. A
        follow-up past its deadline is not waited for again (the mailbox still delivers it)."""
        now = time.monotonic()
        waiting = {answer: until for answer, until in self._unanswered.items() if until > now}
        if not waiting:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(a) for a in waiting), return_exceptions=True),
                                   max(waiting.values()) - now)

    def deliver(self, user_id: int, transaction_id: int, messages: list[dict[str, Any]],
                told: list[LinkedEvent] | None = None) -> asyncio.Future[Any]:
        """Customer messages for the agent's active transaction (`told`: the events of those a commit showed on its
        stream already, as stored); deliveries waiting behind a call on the wire go to the agent together, in one
        call and one commit of its events. The answer resolves once the agent's stream shows them (committed)."""
        return self._mailbox(user_id).post("deliver", self._inbox_id, [(transaction_id, messages)], told,
                                           merge=_join_deliveries)

    async def wait_for_answers(self, answers: list[asyncio.Future[Any]]) -> None:
        """Wait a bounded time for follow-ups told earlier (`tell`), so an API answer finds the agents' views
        already showing the change. A slow agent's follow-up still arrives (the mailbox keeps retrying) and its
        answer is absorbed whenever it comes: the outcome does not change on timeout."""
        if not answers:
            return
        with contextlib.suppress(TimeoutError, MailboxGaveUp):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(a) for a in answers), return_exceptions=True),
                                   self._settings.actor_call_timeout_s)

    def _mailbox(self, user_id: int) -> Mailbox:
        mailbox = self._mailboxes.get(user_id)
        if mailbox is None:
            async def send(method: str, args: tuple[Any, ...]) -> Any:
                return await getattr(self._directory().agent(self._org_id, user_id), method)(*args)

            def reconcile(_letter: Letter) -> None:
                self.tell(user_id, "resync")

            mailbox = Mailbox(f"inbox {self._inbox_id} -> agent {user_id}", send,
                              deadline_s=self._settings.actor_call_timeout_s, give_up_after_s=GIVE_UP_AFTER_S,
                              on_give_up=reconcile)
            self._mailboxes[user_id] = mailbox
        return mailbox
