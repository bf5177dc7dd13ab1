"""The deployment: the routing actors as named Ray actors, and the directory that finds or activates them.

`RayDirectory` is the one place that knows every actor class (it imports each where it first deploys it, so
a process loads only the classes it calls: an agent's process never loads the sender's). The actors
themselves know one another only through the `Directory` interface (`actors.directory`): each is deployed
with a `RayDirectory` of its own handed to its constructor (`_GivenARayDirectory`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from actors.directory import Proxy
from actors.names import agent_actor_name, agent_store_actor_name, inbox_actor_name, sender_actor_name
from config.actor_settings import ActorSettings

if TYPE_CHECKING:  # only the gateway hands pydantic's `Settings`; actors' processes need no pydantic
    from config.settings import Settings

# What each routing actor asks of `ray_actor_resource`: Ray's smallest unit, so a node advertising
# 100,000 of it fits a billion actors (memory, not this, is what limits them).
ACTOR_RESOURCE_SHARE = 0.0001

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

        return self._get_or_create(inbox_actor_name(org_id, inbox_id), given_a_ray_directory(InboxActor),
                                   org_id, inbox_id, self._settings)

    def inbox_if_running(self, org_id: int, inbox_id: int) -> Proxy | None:
        """The inbox's actor if one runs (alive or restarting), else None: unlike `inbox`, no process is started
        (a blocking lookup in Ray's control store)."""
        name = inbox_actor_name(org_id, inbox_id)
        try:
            handle = ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            self._cache.pop(name, None)  # a handle of one stopped for good
            return None
        proxy = Proxy(handle, name, on_dead=self._evict)
        self._cache[name] = proxy
        return proxy

    def agent(self, org_id: int, user_id: int) -> Proxy:
        from actors.agent_actor import AgentActor

        return self._get_or_create(agent_actor_name(org_id, user_id), given_a_ray_directory(AgentActor),
                                   org_id, user_id, self._settings)

    def sender(self, phone_number_id: str) -> Proxy:
        from actors.sender_actor import SenderActor

        return self._get_or_create(sender_actor_name(phone_number_id), given_a_ray_directory(SenderActor),
                                   phone_number_id, self._settings)

    def agent_store(self, index: int) -> Proxy:
        from actors.agent_store_actor import AgentStoreActor

        # A store actor reaches no other actor: it is deployed as it is.
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


class _GivenARayDirectory:
    """Mixed in ahead of an inbox's, agent's or sender's class where it is deployed: the actor's constructor
    is handed a `RayDirectory` over the settings it is created with (its last argument), through which it
    reaches the other actors. Ray pickles the same constructor arguments as for the class itself."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args, directory=RayDirectory(args[-1]))  # type: ignore[call-arg]  # the actor's class


_deployed_classes: dict[type, type] = {}


def given_a_ray_directory(actor_class: type) -> type:
    """`actor_class` as Ray runs it: `_GivenARayDirectory` mixed in, under the class's own name and module, so
    Ray's process titles (`ray::InboxActor`), task names and actor class names stay the class's (made once
    per process). Made here, it has no importable name: Ray ships it by value, its two bases by reference, so
    an actor's process imports its class's module and this one, and no other actor class until it calls one."""
    deployed = _deployed_classes.get(actor_class)
    if deployed is None:
        deployed = type(actor_class.__name__, (_GivenARayDirectory, actor_class), {
            "__module__": actor_class.__module__, "__qualname__": actor_class.__qualname__,
            "__doc__": actor_class.__doc__})
        _deployed_classes[actor_class] = deployed
    return deployed
