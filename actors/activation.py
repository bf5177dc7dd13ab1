"""Orleans-style activation shared by the routing actors: state is loaded from the store on first use.

A Ray actor's `__init__` is synchronous and runs again after every restart, so the async work of
loading state happens lazily, once, in `_ensure_active`, which every public method awaits first.
"""

from __future__ import annotations

import asyncio

from actors.directory import Directory, RayDirectory
from config.settings import Settings
from store.db import Database


class StoreBackedActor:
    def __init__(self, org_id: int, settings: Settings, directory: Directory | None) -> None:
        self.org_id = org_id
        self._settings = settings
        self._directory = directory
        self._db: Database | None = None
        self._activated = False
        self._activation_lock = asyncio.Lock()

    @property
    def db(self) -> Database:
        assert self._db is not None, f"{type(self).__name__} used before activation"
        return self._db

    @property
    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = RayDirectory(self._settings)
        return self._directory

    async def _ensure_active(self) -> bool:
        """Activate on first use; False when what the actor stands for no longer exists in the store."""
        if not self._activated:
            async with self._activation_lock:
                if not self._activated:
                    # A small pool: one actor process per inbox or agent, each with its own engine.
                    self._db = Database(self._settings.database_url, pool_size=2)
                    await self._load()
                    self._activated = True
                    if self._exists():
                        await self._on_activated()
        return self._exists()

    async def _load(self) -> None:
        """Read the actor's state from the store."""
        raise NotImplementedError

    def _exists(self) -> bool:
        raise NotImplementedError

    async def _on_activated(self) -> None:
        """Work that needs the loaded state (re-arming timers, routing what waits)."""
