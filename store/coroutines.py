"""Coroutine helpers of the store: running one that never suspends, and awaiting a transaction to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only calls that complete at once, like `ThreadSession`'s
    methods) and return its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a step run in a SQLite worker thread awaited something that suspends")


async def not_abandoned(running: Awaitable[T]) -> T:
    """Await a started transaction; a caller cancelled meanwhile is cancelled only once it has ended (the
    caller changes memory after the commit, so it must not go on believing it did not happen)."""
    future = asyncio.ensure_future(running)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
