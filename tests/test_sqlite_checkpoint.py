"""The SQLite WAL is checkpointed by the gateway's own thread, not inside a writer's commit; the deployment
lease's heartbeat is one statement on the store's write thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from gateway.deployment import DeploymentLease, read_lease
from store.db import Database
from store.migrate import upgrade_to_head
from store.sqlite_checkpoint import WalCheckpointer, checkpoint_once
from store.sqlite_file import WAL_BACKSTOP_PAGES


def test_writers_leave_the_wal_to_the_checkpointer_which_copies_it_back(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_to_head(url)

    async def run() -> tuple[int, tuple[int, int, int], tuple[int, int, int]]:
        db = Database(url)
        try:
            async with db.session() as session:
                backstop = (await session.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
            # More than SQLite's default 1,000 pages: a writer would have checkpointed inside its commit.
            await db.write(lambda c: c.execute(text("CREATE TABLE pad (x BLOB)")))
            for _ in range(12):
                await db.write(lambda c: c.execute(text(
                    "INSERT INTO pad SELECT randomblob(40000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                    "SELECT i + 1 FROM n WHERE i < 40) SELECT i FROM n)")))
            before = checkpoint_once(str(path))
            checkpointer = WalCheckpointer(str(path), interval_s=0.05)
            checkpointer.start()
            await asyncio.sleep(0.5)
            await checkpointer.stop()
            return backstop, before, checkpoint_once(str(path))
        finally:
            await db.dispose()

    backstop, (_, wal_pages, _), (busy, pages, copied) = asyncio.run(run())
    assert backstop == WAL_BACKSTOP_PAGES
    assert wal_pages > 4000, "the writers' commits left the WAL to the checkpointer"
    assert busy == 0 and copied == pages, "the checkpointer copied the whole WAL back"


def test_the_heartbeat_moves_the_lease_forward_in_one_statement(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)

    async def run() -> tuple[object, object, bool]:
        db = Database(url)
        lease = DeploymentLease(db, "cluster-a", heartbeat_s=60, lease_s=120)
        try:
            await lease.start()
            first = (await read_lease(db)).heartbeat_at  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
            moved = await db.write(lease._beat)
            return first, (await read_lease(db)).heartbeat_at, moved  # type: ignore[union-attr]
        finally:
            await lease.stop()
            await db.dispose()

    first, second, moved = asyncio.run(run())
    assert moved and second > first  # type: ignore[operator]


def test_a_heartbeating_gateway_keeps_holding_its_lease_past_the_first_lifetime(tmp_path: Path) -> None:
    # Found by schemathesis: /readyz answered 503 ("lease not held") from lease_s after start on, as the
    # heartbeat renewed the row but not the gateway's own record of holding it.
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)

    async def run() -> list[bool]:
        db = Database(url)
        lease = DeploymentLease(db, "cluster-a", heartbeat_s=0.05, lease_s=0.3)
        try:
            await lease.start()
            held = []
            for _ in range(8):  # 0.8 s: more than two lifetimes of the lease
                await asyncio.sleep(0.1)
                held.append(lease.is_held())
            return held
        finally:
            await lease.stop()
            await db.dispose()

    assert all(asyncio.run(run()))
