"""Agents' shared PostgreSQL connections: a few store actors (`agent-store:<n>`) run the agent actors' steps.

On PostgreSQL every process that touches the store holds connections, and agents are the many processes:
with a connection or two each, the server's `max_connections` would cap how many agents can be busy at
once. Instead each agent sends its steps (`store.agent_store`, each one transaction) to store actor
`user_id mod agent_store_actors`, which runs them on at most `agent_store_connections` connections of its
own. So the agents' share of the server's connections is `agent_store_actors * agent_store_connections`,
however many agents are online (the README's formula has the whole count).

A store actor holds no state beyond its connections: when it dies, Ray restarts it, and a step it was
running fails in its agent as `StoreUnavailable` (as a lost connection does), its outcome unknown: before
failing the step, the agent asks the store whether its events landed (`AgentActor._landed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from actors.directory import ActorUnavailable
from config.actor_settings import ActorSettings
from store.agent_store import open_agent_store
from store.agent_store_steps import AgentStore, Step
from store.errors import StoreUnavailable

T = TypeVar("T")


class AgentStoreActor:
    def __init__(self, index: int, settings: ActorSettings) -> None:
        self.index = index
        self._store = open_agent_store(settings.database_url, linger_s=settings.agent_connection_linger_s,
                                       name=f"wa-router agent-store {index}",
                                       connections=settings.agent_store_connections,
                                       keep=settings.agent_store_connections)

    @ray.method(concurrency_group="health")
    async def ping(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    async def run(self, step: Step[T], write: bool = False) -> T:
        return await self._store.run(step, write)


class RemoteAgentStore(AgentStore):
    """An agent's store whose steps run in a store actor (`proxy()` finds it; a new one after a restart)."""

    reads_from_any_loop = True

    def __init__(self, proxy: Callable[[], Any]) -> None:
        self._proxy = proxy

    async def _run(self, step: Step[T], write: bool = False) -> T:
        try:
            result: T = await self._proxy().run(step, write)
        except ActorUnavailable as exc:
            raise StoreUnavailable(f"agent store actor: {exc}") from exc
        return result

    async def close(self) -> None:
        """The connections are the store actor's: nothing of this agent's to close."""
