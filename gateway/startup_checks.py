"""What a gateway refuses at start, each as one line, before it touches any inbox.

- SQLite on a Ray cluster whose nodes run on more than one host: actors there cannot reach the file (and
  SQLite's locks do not work across machines). Several nodes on one host (`wa-router bench
  --cluster-workers`) share the file and work.
- A second gateway on the same SQLite store: SQLite has one writer at a time and this gateway's intake
  groups its writes on the assumption that it is the only gateway; several gateways need PostgreSQL.
  The first gateway holds an exclusive `flock` on `<database>.gateway` while it runs; the kernel lets it go
  when the process dies, so a crashed gateway never blocks its successor.
- An encryption key generated per host (no `WA_ROUTER_SECRET_KEY`) on a cluster of several hosts: actors
  on the other hosts would generate keys of their own and read no stored token.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass

from store.db import is_sqlite
from store.sqlite_file import sqlite_file_path


class StartupRefused(Exception):
    """The gateway cannot work with this configuration; the message is the one line to print."""


def refusals(database_url: str, hosts: int, secret_key_set: bool) -> list[str]:
    """Every reason this configuration cannot work on a Ray cluster whose nodes run on `hosts` hosts (pure)."""
    found: list[str] = []
    if hosts > 1 and is_sqlite(database_url):
        found.append(f"wa-router: refusing to start: the Ray cluster's nodes run on {hosts} hosts and the store is "
                     f"SQLite ({database_url}), which actors on other hosts cannot reach; set WA_ROUTER_DATABASE_URL "
                     f"to a PostgreSQL database")
    if hosts > 1 and not secret_key_set:
        found.append(f"wa-router: refusing to start: the Ray cluster's nodes run on {hosts} hosts and the encryption "
                     f"key would be generated on each host; set WA_ROUTER_SECRET_KEY to the same key everywhere")
    return found


def hosts_of(nodes: list[dict[str, object]]) -> int:
    """Distinct hosts (node addresses) among the alive nodes of `ray.nodes()`."""
    return len({str(node.get("NodeManagerAddress")) for node in nodes if node.get("Alive")})


def alive_hosts() -> int:
    import ray

    return hosts_of(ray.nodes())


def check_cluster(database_url: str, secret_key: str | None) -> None:
    """Raise StartupRefused (all reasons, one line each) for the connected Ray cluster."""
    found = refusals(database_url, alive_hosts(), bool(secret_key))
    if found:
        raise StartupRefused("\n".join(found))


@dataclass
class SqliteGatewayClaim:
    """This gateway's exclusive hold on a SQLite store, for the gateway's lifetime."""

    path: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def claim_sqlite_store(database_url: str) -> SqliteGatewayClaim | None:
    """Hold the SQLite store for this gateway (None for PostgreSQL or an in-memory store).

    Raises StartupRefused when another live gateway holds it.
    """
    database = sqlite_file_path(database_url) if is_sqlite(database_url) else None
    if database is None:
        return None
    path = database + ".gateway"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupRefused(f"wa-router: refusing to start: the SQLite store {database_url} is already served by "
                             f"another gateway ({holder}); SQLite serves one gateway, several need PostgreSQL "
                             f"(WA_ROUTER_DATABASE_URL)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    return SqliteGatewayClaim(path, fd)
