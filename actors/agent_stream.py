"""An agent's event stream as its readers see it: in their own concurrency group ("stream"), so a thousand open
streams never starve the calls inboxes make."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from actors.agent_core import AgentCore, event_of
from store.agent_store import open_agent_store
from store.agent_store_steps import AgentStore

# An event stream ends by itself after this long without an event (while the agent holds conversations; without,
# after the longer quiet), or this long in all (see stream_events).
STREAM_IDLE_S = 15.0
STREAM_IDLE_WITHOUT_WORK_S = 60.0
STREAM_LIFETIME_S = 120.0


class AgentStream(AgentCore):
    """Readers of the agent's events: each stream one Ray streaming call, fed from memory or the store."""

    # ------------------------------------------------------------------ event stream (own concurrency group)

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
                            limit: int = 500, idle_without_work_s: float = STREAM_IDLE_WITHOUT_WORK_S,
                            ) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of events after the cursor, each yielded as soon as it is committed: one call carries a
        stream's events (a Ray streaming generator), where a call per batch cost ~0.5 ms more CPU per event.

        Ray does not stop an actor's generator when its caller dies, so a stream ends by itself after
        `idle_s` without an event or `lifetime_s` in all; the caller opens the next from its cursor. While the agent
        shows no open conversation the quiet allowed is `idle_without_work_s`: no follow-up can be missed then (below),
        and each stream opened again is an actor call (under the benchmark's load most agents wait between
        conversations longer than `idle_s`).
        """
        await self._wait_active()
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime_s
        waiter = self._signal.register()
        # While the agent holds conversations, a stream's first read is the store's: a follow-up the intake showed
        # whose tell to this agent was lost (its gateway died after the commit) is shown when the next stream
        # opens, at most `idle_s` later, though nothing wakes this agent.
        from_store = bool(self.active)
        try:
            while True:
                # Cleared before reading: an event committed after the read sets it again.
                waiter[1].clear()
                events = await self._events_after(after_id, limit, from_store)
                from_store = False
                if events:
                    after_id = events[-1]["id"]
                    self._last_call = time.monotonic()
                    yield events
                # Asked anew after every event: a conversation the stream shows taken on (the event that wakes it,
                # before the agent's memory counts it as work) shortens the quiet allowed.
                has_work = bool(self._shown_open or self.active)
                wait_s = min(idle_s if has_work else idle_without_work_s, ends_at - loop.time())
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

    async def _events_after(self, after_id: int, limit: int, from_store: bool = False) -> list[dict[str, Any]]:
        recent = list(self._recent)  # a copy: the main loop appends from another thread
        if not from_store and recent and recent[0]["id"] <= after_id + 1:
            return [e for e in recent if e["id"] > after_id][:limit]
        return [event_of(row) for row in await self._reader_store().events_after(self.user_id, after_id, limit)]
