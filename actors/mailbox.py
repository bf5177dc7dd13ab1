"""Ordered, retried delivery of idempotent calls from one actor to another.

Ray calls are at most once: a reply can be lost although the call took effect. Every call between
inbox and agent actors is therefore idempotent on an id (an offer id, a transaction id, a message
id) and goes through a mailbox, which sends its letters one at a time, in order, each with a
deadline, and retries a failed letter with backoff and jitter until it is delivered or too old.
A letter given up on is reported (`on_give_up`), so the sender can have the receiver reconcile
from the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Send = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
# Combines the arguments of an unsent letter with those of a newer letter of the same method.
Merge = Callable[[tuple[Any, ...], tuple[Any, ...]], tuple[Any, ...]]


@dataclass
class Letter:
    method: str
    args: tuple[Any, ...]
    # Letters with the same key replace each other while unsent (only the newest snapshot matters).
    key: str | None = None
    merge: Merge | None = None
    result: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Mailbox:
    def __init__(self, name: str, send: Send, *, deadline_s: float, give_up_after_s: float,
                 on_give_up: Callable[[Letter], None] | None = None) -> None:
        self.name = name
        self._send = send
        self._deadline_s = deadline_s
        self._give_up_after_s = give_up_after_s
        self._on_give_up = on_give_up
        self._letters: deque[Letter] = deque()
        self._worker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._letters)

    def post(self, method: str, *args: Any, key: str | None = None, merge: Merge | None = None
             ) -> asyncio.Future[Any]:
        """Queue a call; the future resolves with its first successful answer (or the give-up error).

        `key`: replaces an unsent letter with the same key. `merge`: joins the newest letter when it is
        unsent and of the same method (one call carries both; the receiver must take the merged form),
        so while a call is on the wire the ones behind it become one: fewer calls the busier it gets.
        """
        if key is not None:
            for queued in list(self._letters)[1:]:  # the first may be on the wire already
                if queued.key == key:
                    queued.args = args
                    return queued.result
        if merge is not None and len(self._letters) > 1:
            newest = self._letters[-1]
            if newest.method == method and newest.merge is merge:
                newest.args = merge(newest.args, args)
                return newest.result
        letter = Letter(method, args, key, merge)
        self._letters.append(letter)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._deliver_all())
        return letter.result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for letter in self._letters:
            if not letter.result.done():
                letter.result.cancel()
        self._letters.clear()

    async def _deliver_all(self) -> None:
        while self._letters:
            letter = self._letters[0]
            await self._deliver(letter)
            with contextlib.suppress(IndexError):
                self._letters.popleft()

    async def _deliver(self, letter: Letter) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.05
        while True:
            try:
                answer = await asyncio.wait_for(self._send(letter.method, letter.args), self._deadline_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loop.time() - started > self._give_up_after_s:
                    log.error("%s: gave up on %s after %.0fs: %s", self.name, letter.method,
                              loop.time() - started, exc)
                    if not letter.result.done():
                        letter.result.set_exception(MailboxGaveUp(f"{self.name}: {letter.method}: {exc}"))
                        # Nobody may be waiting for it: mark the exception retrieved.
                        letter.result.exception()
                    if self._on_give_up is not None:
                        self._on_give_up(letter)
                    return
                log.warning("%s: %s failed (%s); retrying in %.2fs", self.name, letter.method,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            if not letter.result.done():
                letter.result.set_result(answer)
            return


class MailboxGaveUp(Exception):
    """A letter could not be delivered before its sender stopped trying."""
