"""Orleans-style activation shared by the routing actors: state is loaded from the store.

A Ray actor's `__init__` is synchronous and runs again after every restart. Under Ray it starts the
activation at once (so a restarted inbox re-arms its offer timers without waiting for a call);
every public method also awaits `_ensure_active`, which is how plain-Python use activates.

An actor reaches the others through the `Directory` it is given: deployed, a `RayDirectory`
(`actors.ray_directory` hands it one); in plain Python (tests), whatever the test hands it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import ray

from actors import gc_tuning
from actors.directory import Directory
from actors.ray_connection import warn_if_below_the_gateways_priority
from config.actor_settings import ActorSettings

if TYPE_CHECKING:
    from store.db import Database

log = logging.getLogger(__name__)

# Back-off between activation attempts while the store is unreachable.
_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


class StoreBackedActor:
    # PostgreSQL connections an inbox's or sender's engine keeps, as many more while steps overlap.
    POOL_SIZE = 2
    # Whether the process does much of the message path's work (`actors.gc_tuning`).
    BUSY_PROCESS = False

    def __init__(self, org_id: int, settings: ActorSettings, directory: Directory | None) -> None:
        self.org_id = org_id
        self._settings = ActorSettings.from_settings(settings)  # plain Python (tests) may hand `Settings`
        self._directory = directory
        self._db: Database | None = None
        self._activated = False
        self._activation_lock = asyncio.Lock()
        self._boot: asyncio.Task[None] | None = None
        # The loop of the default concurrency group: all state changes run there.
        self._main_loop: asyncio.AbstractEventLoop | None = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # plain Python (no event loop yet): activation happens on first call
        if loop is not None:
            self._main_loop = loop
            # Kept on the actor: the event loop holds tasks only weakly.
            self._boot = loop.create_task(self._activate_until_done())


    async def _activate_until_done(self) -> None:
        """A boot loop that never gives up: the store may be briefly unreachable after a restart."""
        attempt = 0
        while not self._activated:
            try:
                await self._ensure_active()
            except Exception:
                delay = _RETRY_DELAYS_S[min(attempt, len(_RETRY_DELAYS_S) - 1)]
                log.exception("%s activation failed; retrying in %.1fs", type(self).__name__, delay)
                attempt += 1
                await asyncio.sleep(delay)

    @property
    def db(self) -> Database:
        assert self._db is not None, f"{type(self).__name__} used before activation"
        return self._db

    @property
    def directory(self) -> Directory:
        assert self._directory is not None, f"{type(self).__name__} was given no directory"
        return self._directory

    async def _ensure_active(self) -> bool:
        """Activate on first use; False when what the actor stands for no longer exists in the store.

        Activated only once loading AND the work after it succeeded: a failure leaves the actor
        unactivated (memory dropped), so the next call or the boot loop tries again.
        """
        if not self._activated:
            async with self._activation_lock:
                if not self._activated:
                    if self._main_loop is None:
                        self._main_loop = asyncio.get_running_loop()
                    self._open_store()
                    try:
                        await self._load()
                        if self._exists():
                            await self._on_activated()
                    except BaseException:
                        self._reset()
                        raise
                    self._activated = True
                    if self._exists() and in_ray_actor():
                        if self._settings.gc_tuning:
                            gc_tuning.tune_after_start_up(busy=self.BUSY_PROCESS)
                        warn_if_below_the_gateways_priority(f"{type(self).__name__} of organization {self.org_id}")
        return self._exists()

    def _open_store(self) -> None:
        """Open the actor's store once (activation may be tried again after a failure)."""
        if self._db is None:
            # Imported here, not at the top: an agent actor's process never loads SQLAlchemy (see AgentActor).
            from store.db import Database

            # A small pool: one actor process per inbox or sender, each with its own engine.
            self._db = Database(self._settings.database_url, pool_size=self.POOL_SIZE)

    def _reset(self) -> None:
        """Forget the in-memory state (cancel timers) before loading it again."""

    async def _load(self) -> None:
        """Read the actor's state from the store."""
        raise NotImplementedError

    def _exists(self) -> bool:
        raise NotImplementedError

    async def _on_activated(self) -> None:
        """Work that needs the loaded state (re-arming timers, routing what waits)."""


def in_ray_actor() -> bool:
    """Whether this code runs in a Ray actor's process (not in-process, as tests run actors)."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
