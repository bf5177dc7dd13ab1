"""How actors and the gateway reach one another: the `Directory` interface and the awaitable proxies it hands out.

Everything else (inbox and agent logic, the gateway) talks to a `Directory` and to `Proxy`s, so the state
machines run and test without Ray. The directory that creates the named Ray actors is `actors.ray_directory`
(it knows every actor class; this module knows none), and joining or starting Ray is `actors.ray_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import ray

log = logging.getLogger(__name__)


class ActorUnavailable(Exception):
    """An actor died or could not be reached; the caller may retry (state is in the store)."""


class Proxy:
    """`await proxy.method(*args)` runs `handle.method.remote(*args)` and awaits its result.

    When the actor is dead for good, `on_dead` lets the directory forget the handle, so the next
    call activates the named actor again (its state is in the store).
    """

    def __init__(self, handle: Any, name: str, on_dead: Callable[[str], None] | None = None) -> None:
        self._handle = handle
        self.name = name
        self._on_dead = on_dead

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        remote_method = getattr(self._handle, method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await remote_method.remote(*args, **kwargs)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                raise self._unavailable(exc) from exc

        return call

    def _unavailable(self, exc: Exception) -> ActorUnavailable:
        # Dead for good: forget the handle. Restarting (or unreachable for a moment): it works again soon.
        if isinstance(exc, ray.exceptions.ActorDiedError) and self._on_dead is not None:
            self._on_dead(self.name)
        return ActorUnavailable(f"{self.name}: {exc}")

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """The items of a generator method, each as it is yielded (one call for all of them).

        Ray does not stop an actor's generator when its caller goes away, so leaving early cancels it;
        the generator should also end by itself (its caller may die without cancelling).
        """
        generator = getattr(self._handle, method).remote(*args)
        try:
            async for ref in generator:
                yield await ref
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            with contextlib.suppress(Exception):  # already ended, or its actor gone: nothing to stop
                ray.cancel(generator)


class Directory(Protocol):
    """How actors and the gateway reach inbox, agent, sender and agent store actors."""

    def inbox(self, org_id: int, inbox_id: int) -> Any: ...

    def inbox_if_running(self, org_id: int, inbox_id: int) -> Any: ...

    def agent(self, org_id: int, user_id: int) -> Any: ...

    def sender(self, phone_number_id: str) -> Any: ...

    def agent_store(self, index: int) -> Any: ...

    def forget_inbox(self, org_id: int, inbox_id: int) -> None: ...

    def forget_agent(self, org_id: int, user_id: int) -> None: ...


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
    """Fire-and-forget with a logged failure: for notifications that must not block their caller."""

    async def run() -> Any:
        try:
            return await coro
        except Exception:
            log.exception("background call failed: %s", what)
            return None

    task = asyncio.ensure_future(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def call_while_unavailable(proxy: Callable[[], Any], method: str, *args: Any, within_s: float,
                                 again: Callable[[Any], bool] | None = None) -> Any:
    """`proxy().method(*args)`, tried again while the actor is unavailable (restarting, or deactivated:
    `proxy()` is asked anew each time, so a dead handle is replaced by a new activation) or while
    `again(result)`. After `within_s` the last ActorUnavailable is raised, or the last result returned.
    Only for calls that are safe to repeat."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    delay = 0.1
    while True:
        try:
            result = await getattr(proxy(), method)(*args)
            if again is None or not again(result) or loop.time() + delay > deadline:
                return result
        except ActorUnavailable:
            if loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


# How long an event for an agent's stream waits for its actor to restart or reactivate.
_PUSH_WITHIN_S = 30.0


async def _call_agent(directory: Directory, org_id: int, user_id: int, what: str, method: str, *args: Any) -> None:
    """`method(*args)` on the agent, safe to repeat, waiting out a restart or a deactivation (the next attempt
    activates the agent again from the store); `what` names it in the log if the wait runs out."""
    try:
        await call_while_unavailable(lambda: directory.agent(org_id, user_id), method, *args, within_s=_PUSH_WITHIN_S)
    except ActorUnavailable as exc:
        log.error("agent %s:%s: %s not done within %.0fs: %s", org_id, user_id, what, _PUSH_WITHIN_S, exc)


async def push_agent_event(directory: Directory, org_id: int, user_id: int, kind: str,
                           payload: dict[str, Any]) -> None:
    """Append an event to an agent's stream (one step of the agent's)."""
    await _call_agent(directory, org_id, user_id, f"{kind} event shown", "push_event", kind, payload)


async def tell_agent_of_events(directory: Directory, org_id: int, user_id: int, told: list[Any]) -> None:
    """Tell an agent of events another actor's commit appended to its stream (`told`: as stored, linked). Given up,
    they are still on its stream: the agent reads them when it next reads it, or when a stream opens."""
    await _call_agent(directory, org_id, user_id, f"told of {len(told)} events", "read_stream", told)
