"""The SQLite WAL checkpointed in the background, never inside a writer's turn.

SQLite's default checkpoints the WAL in whichever connection commits the 1,000th page, inside that commit,
with the writers' turn still held (`store.sqlite_file.WriterTurn`): every few hundred messages one step
stalls every process waiting to write. Here the gateway checkpoints on a connection of its own, in a thread,
every `interval_s` (PASSIVE: it copies what no reader still needs and never waits for a reader or writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

log = logging.getLogger(__name__)


def checkpoint_once(path: str) -> tuple[int, int, int]:
    """(busy, pages in the WAL, pages checkpointed), as `PRAGMA wal_checkpoint(PASSIVE)` answers."""
    connection = sqlite3.connect(path, timeout=5.0)
    try:
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        connection.close()


class WalCheckpointer:
    """A control loop that never dies: checkpoints the WAL of the SQLite file at `path` every `interval_s`."""

    def __init__(self, path: str, interval_s: float) -> None:
        self._path = path
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="wa-router-wal-checkpoint")

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(checkpoint_once, self._path)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("WAL checkpoint of %s failed", self._path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
