"""Wake-ups that cross event loops: an actor's stream readers run in their own concurrency group.

Ray gives each concurrency group of an async actor its own thread and event loop, and asyncio's
primitives belong to one loop. The writer (the actor's main loop) calls `notify()`; each waiting
reader gets its own `asyncio.Event`, set on the reader's loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading


class EventSignal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def register(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def discard(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def has_waiters(self) -> bool:
        return self.waiting() > 0

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
