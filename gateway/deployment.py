"""The deployment lease: exactly one Ray cluster acts on a store's inboxes.

A gateway holds the lease (the `deployments` row) while it runs, heartbeating it. Gateways of the
same Ray cluster (several workers, or a restart that joins the same cluster) share it. A gateway of
ANOTHER cluster refuses to start while the lease is live, before it touches any inbox: two clusters
would each run an actor for the same inbox. The per-inbox fencing epochs are the second line of
defence, should a stale owner act anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy import update as sql_update

from store.db import Database
from store.tables import Deployment
from store.types import utcnow
from store.upsert import upsert

log = logging.getLogger(__name__)

LEASE_ROW = 1


class DeploymentConflict(Exception):
    """The store is in use by a live deployment of another Ray cluster."""


@dataclass(frozen=True)
class Lease:
    cluster_id: str
    holder: str
    heartbeat_at: datetime | None


def this_host_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def cluster_identity(namespace: str) -> str:
    """The deployment this process belongs to: the Ray cluster it is connected to (its session, unique per
    cluster start and kept across a head restart with GCS fault tolerance) and the actors' namespace.
    Every gateway joined to the same cluster and namespace shares the lease."""
    import ray

    node = getattr(getattr(ray._private.worker, "global_worker", None), "node", None)
    session = getattr(node, "session_name", None)
    if session is None:
        # A Ray client (`ray://`, the gateways on Kubernetes) has no node: the cluster's GCS keeps the name
        # (persisted in Redis with GCS fault tolerance, so a restarted head keeps it). Not the GCS address,
        # which changes with the head pod's IP.
        from ray.experimental import internal_kv

        with contextlib.suppress(Exception):
            stored = internal_kv._internal_kv_get("session_name", namespace=b"session")
            session = stored.decode() if isinstance(stored, bytes) else stored
    return f"{session or ray.get_runtime_context().gcs_address}/{namespace}"


def same_deployment(stored: str, ours: str | None) -> bool:
    # A lease written before identities named the namespace holds the cluster's session alone.
    return ours is not None and (stored == ours or ("/" not in stored and ours.startswith(stored + "/")))


async def read_lease(db: Database) -> Lease | None:
    async with db.session() as session:
        row = await session.get(Deployment, LEASE_ROW)
        return None if row is None else Lease(row.cluster_id, row.holder, row.heartbeat_at)


def conflict_message(lease: Lease, database_url: str, now: datetime) -> str:
    age = (now - lease.heartbeat_at).total_seconds() if lease.heartbeat_at else 0.0
    return (f"wa-router: the store {database_url} is in use by a live deployment (Ray cluster "
            f"{lease.cluster_id}, last heartbeat {age:.0f}s ago); stop it, or use another data directory "
            f"(WA_ROUTER_DATABASE_URL)")


def _holder_alive(holder: str) -> bool:
    """A holder on this host is alive while its process is; one elsewhere cannot be checked from here."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(lease: Lease | None, lease_s: float, now: datetime) -> bool:
    return lease is not None and lease.heartbeat_at is not None \
        and now - lease.heartbeat_at < timedelta(seconds=lease_s) and _holder_alive(lease.holder)


async def check_free(db: Database, cluster_id: str | None, lease_s: float) -> None:
    """Raise DeploymentConflict when another cluster holds a live lease (`cluster_id` None: a new cluster)."""
    lease = await read_lease(db)
    now = utcnow()
    if is_live(lease, lease_s, now) and lease is not None and not same_deployment(lease.cluster_id, cluster_id):
        raise DeploymentConflict(conflict_message(lease, db.url, now))


class DeploymentLease:
    """Held from start to stop of a gateway; `start` fails with DeploymentConflict."""

    def __init__(self, db: Database, cluster_id: str, *, heartbeat_s: float, lease_s: float) -> None:
        self._db = db
        self.cluster_id = cluster_id
        self._heartbeat_s = heartbeat_s
        self._lease_s = lease_s
        self._task: asyncio.Task[None] | None = None
        # Monotonic time of the last heartbeat that wrote the lease as ours (None: not held).
        self._confirmed_at: float | None = None

    def is_held(self) -> bool:
        """The lease was written as ours within its lifetime: no other cluster may have taken the store."""
        return self._confirmed_at is not None and time.monotonic() - self._confirmed_at < self._lease_s

    async def start(self) -> None:
        await check_free(self._db, self.cluster_id, self._lease_s)
        now = utcnow()
        async with self._db.session() as session:
            await upsert(session, Deployment, [{"id": LEASE_ROW, "cluster_id": self.cluster_id,
                                                "holder": this_host_process(), "started_at": now,
                                                "heartbeat_at": now}], key=["id"])
        self._confirmed_at = time.monotonic()
        self._task = asyncio.create_task(self._beat_forever(), name="wa-router-deployment-lease")

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                if await self._db.write(self._beat):
                    self._confirmed_at = time.monotonic()  # still ours: held for another lease_s
                    continue
                # The row is gone or another cluster's: said (or taken back) through the session below.
                async with self._db.session() as session:
                    row = await session.get(Deployment, LEASE_ROW)
                    if row is None or same_deployment(row.cluster_id, self.cluster_id):
                        await upsert(session, Deployment, [{"id": LEASE_ROW, "cluster_id": self.cluster_id,
                                                            "holder": this_host_process(),
                                                            "started_at": row.started_at if row else utcnow(),
                                                            "heartbeat_at": utcnow()}], key=["id"])
                        confirmed = True
                    else:
                        log.error("the deployment lease was taken by Ray cluster %s", row.cluster_id)
                        confirmed = False
                self._confirmed_at = time.monotonic() if confirmed else None
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deployment lease heartbeat failed")

    def _beat(self, connection: Connection) -> bool:
        """One statement on the store's write thread (no async round trips inside SQLite's writer turn)."""
        moved = connection.execute(
            sql_update(Deployment).where(Deployment.id == LEASE_ROW, Deployment.cluster_id == self.cluster_id)
            .values(holder=this_host_process(), heartbeat_at=utcnow()))
        return bool(moved.rowcount)

    async def stop(self) -> None:
        self._confirmed_at = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Released only if still ours; the heartbeat cleared, another cluster may start at once.
        with contextlib.suppress(Exception):
            async with self._db.session() as session:
                row = await session.scalar(select(Deployment).where(Deployment.id == LEASE_ROW))
                # Only the last writer clears it: another gateway of this deployment may still be beating.
                if row is not None and row.cluster_id == self.cluster_id and row.holder == this_host_process():
                    row.heartbeat_at = None
