"""The one thin wrapper around Ray: finding or activating named actors and calling them.

Everything else (inbox and agent logic, the gateway) talks to a `Directory` and to awaitable
proxies, so the state machines run and test without Ray. Joining or starting Ray is `actors.ray_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray

from actors.names import agent_actor_name, agent_store_actor_name, inbox_actor_name, sender_actor_name
from config.actor_settings import ActorSettings

if TYPE_CHECKING:  # only the gateway hands pydantic's `Settings`; actors' processes need no pydantic
    from config.settings import Settings

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

    def agent(self, org_id: int, user_id: int) -> Any: ...

    def sender(self, phone_number_id: str) -> Any: ...

    def agent_store(self, index: int) -> Any: ...

    def forget_inbox(self, org_id: int, inbox_id: int) -> None: ...

    def forget_agent(self, org_id: int, user_id: int) -> None: ...


_background: set[asyncio.Task[Any]] = set()

# What each routing actor asks of `ray_actor_resource`: Ray's smallest unit, so a node advertising
# 100,000 of it fits a billion actors (memory, not this, is what limits them).
ACTOR_RESOURCE_SHARE = 0.0001


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


async def push_agent_event(directory: Directory, org_id: int, user_id: int, kind: str,
                           payload: dict[str, Any]) -> None:
    """Append an event to an agent's stream, waiting out a restart or a deactivation (the next attempt
    activates the agent again from the store)."""
    try:
        await call_while_unavailable(lambda: directory.agent(org_id, user_id), "push_event", kind, payload,
                                     within_s=_PUSH_WITHIN_S)
    except ActorUnavailable as exc:
        log.error("agent %s:%s: %s event not shown within %.0fs: %s", org_id, user_id, kind, _PUSH_WITHIN_S, exc)


_remote_classes: dict[type, Any] = {}


def routing_actor_class(actor_class: type) -> Any:
    """The Ray actor class with the options every routing actor shares (made once per process; the
    benchmark's design skeleton uses it too, so its actors run as ours do)."""
    remote = _remote_classes.get(actor_class)
    if remote is None:
        remote = ray.remote(  # type: ignore[call-overload]  # Ray's stubs omit the concurrency options
            num_cpus=0,
            max_restarts=-1,
            # A call is not blindly replayed after a restart: its effect may already be in the store.
            max_task_retries=0,
            max_concurrency=1000,
            # No Ray task events by default (`Settings.ray_task_events`; the directory sets them per
            # deployment): the benchmark's skeleton and empty actors then run as ours do.
            enable_task_events=False,
            # Health checks have their own group, so a busy actor still answers them; an agent's
            # stream readers have theirs, so open streams never starve the calls inboxes make.
            concurrency_groups={"health": 1, "stream": 1000},
        )(actor_class)
        _remote_classes[actor_class] = remote
    return remote


class RayDirectory:
    """Named, detached, restartable actors in one namespace; handles cached per process.

    Options are set here, where the actors are created (as Ray Serve's controller does).
    """

    def __init__(self, settings: ActorSettings | Settings, key_file: Path | None = None) -> None:
        # What actors are given (pickled into their processes): the plain values, not pydantic's `Settings`,
        # and where the sender finds the key (`key_file`, e.g. the gateway's credential file), never the key.
        self._settings = ActorSettings.from_settings(settings)
        if key_file is not None:
            self._settings = replace(self._settings, secret_key_file=key_file)
        self._namespace = settings.ray_namespace
        self._cache: dict[str, Proxy] = {}

    def _get_or_create(self, name: str, actor_class: type, *args: Any) -> Proxy:
        proxy = self._cache.get(name)
        if proxy is None:
            placement: dict[str, Any] = {}
            if self._settings.ray_actor_resource:
                # A sliver of a resource only the chosen nodes advertise: placed there, never limited by it.
                placement["resources"] = {self._settings.ray_actor_resource: ACTOR_RESOURCE_SHARE}
            handle = routing_actor_class(actor_class).options(
                name=name, namespace=self._namespace, get_if_exists=True, lifetime="detached",
                enable_task_events=self._settings.ray_task_events, **placement,
            ).remote(*args)
            proxy = Proxy(handle, name, on_dead=self._evict)
            self._cache[name] = proxy
        return proxy

    def _evict(self, name: str) -> None:
        self._cache.pop(name, None)

    def inbox(self, org_id: int, inbox_id: int) -> Proxy:
        from actors.inbox_actor import InboxActor

        return self._get_or_create(inbox_actor_name(org_id, inbox_id), InboxActor, org_id, inbox_id, self._settings)

    def agent(self, org_id: int, user_id: int) -> Proxy:
        from actors.agent_actor import AgentActor

        return self._get_or_create(agent_actor_name(org_id, user_id), AgentActor, org_id, user_id, self._settings)

    def sender(self, phone_number_id: str) -> Proxy:
        from actors.sender_actor import SenderActor

        return self._get_or_create(sender_actor_name(phone_number_id), SenderActor, phone_number_id, self._settings)

    def agent_store(self, index: int) -> Proxy:
        from actors.agent_store_actor import AgentStoreActor

        return self._get_or_create(agent_store_actor_name(index), AgentStoreActor, index, self._settings)

    def _kill(self, name: str) -> None:
        self._cache.pop(name, None)
        with contextlib.suppress(ValueError):  # never activated
            ray.kill(ray.get_actor(name, namespace=self._namespace), no_restart=True)

    def forget_inbox(self, org_id: int, inbox_id: int) -> None:
        self._kill(inbox_actor_name(org_id, inbox_id))

    def forget_agent(self, org_id: int, user_id: int) -> None:
        self._kill(agent_actor_name(org_id, user_id))

    def kill_namespace(self) -> int:
        """Stop every actor of this deployment's namespace (tests sharing one Ray instance)."""
        killed = 0
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") == self._namespace:
                try:
                    ray.kill(ray.get_actor(entry["name"], namespace=self._namespace), no_restart=True)
                    killed += 1
                except ValueError:
                    pass
        self._cache.clear()
        return killed
