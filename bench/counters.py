"""Work counted per message: Ray actor calls by method (Ray's task summary, read from the gateway's
dashboard), the store's write transactions (PostgreSQL's `pg_stat_database.xact_commit`, SQLite's writers'
turns) and, on PostgreSQL, the connections held (`pg_stat_activity`); where the actors run (one node, or
several in a cluster run)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from typing import Any

from store.sqlite_file import sqlite_file_path, turns_taken

_SUMMARY = """
import json, sys
from ray.util.state import summarize_tasks
print(json.dumps(summarize_tasks(address=sys.argv[1], timeout=60, raise_on_missing_output=False)))
"""

_PLACEMENT = """
import json, sys
from ray.util.state import list_actors
rows = list_actors(address=sys.argv[1], filters=[("state", "=", "ALIVE")], limit=10_000, timeout=60,
                   raise_on_missing_output=False)
print(json.dumps([[row.class_name, row.node_id] for row in rows]))
"""


def _state_query(script: str, dashboard_url: str, token_auth: bool) -> Any:
    """Run a query of Ray's state API in a fresh process; None when it is unavailable.

    A fresh process: Ray settles its authentication mode once per process. The gateway's local instance
    uses token authentication (the token in ~/.ray/auth_token); the bench's cluster does not.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token"} if token_auth else dict(os.environ)
    done = subprocess.run([sys.executable, "-c", script, dashboard_url], capture_output=True, timeout=120, env=env)
    try:
        return json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):  # best effort: the figure is left out, the run goes on
        print(f"[bench] Ray state API unavailable: {done.stderr.decode()[-300:]}", file=sys.stderr, flush=True)
        return None


def actor_calls(dashboard_url: str, token_auth: bool) -> dict[str, int]:
    """Finished and running actor tasks per `Class.method` so far; empty when the summary is unavailable."""
    summary = _state_query(_SUMMARY, dashboard_url, token_auth)
    groups = summary.get("cluster", {}).get("summary", {}) if isinstance(summary, dict) else {}
    counts: dict[str, int] = {}
    for name, group in groups.items():
        states = group.get("state_counts", {}) if isinstance(group, dict) else {}
        counts[name] = int(sum(states.values()))
    return counts


def short_node_id(node_id: str) -> str:
    """How the report names a node (Ray's ids are 56 hex digits)."""
    return node_id[:8]


def actor_placement(dashboard_url: str, token_auth: bool) -> dict[str, dict[str, int]]:
    """Live actors per class and per node (`short_node_id`)."""
    counts: dict[str, dict[str, int]] = {}
    for class_name, node_id in _state_query(_PLACEMENT, dashboard_url, token_auth) or []:
        per_node = counts.setdefault(str(class_name), {})
        node = short_node_id(str(node_id))
        per_node[node] = per_node.get(node, 0) + 1
    return counts


def per_message(before: dict[str, int], after: dict[str, int], messages: int) -> dict[str, float]:
    """Calls per message of each actor method that ran in between (methods of the routing actors only)."""
    if not messages or not after:
        return {}
    deltas = {name: after[name] - before.get(name, 0) for name in after}
    return {name: round(delta / messages, 2) for name, delta in sorted(deltas.items(), key=lambda kv: -kv[1])
            if delta > 0 and name.startswith(("InboxActor.", "AgentActor.", "AgentStoreActor."))}


def _server_and_database(database_url: str) -> tuple[str, str]:
    server, name = database_url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
    return server, name


# Whose a connection is, by its `application_name` (agents' own before their store actors' shared ones).
_CONNECTION_OWNERS = """
SELECT count(*),
       count(*) FILTER (WHERE application_name LIKE 'wa-router agent %'
                        AND application_name NOT LIKE 'wa-router agent-store %'),
       count(*) FILTER (WHERE application_name LIKE 'wa-router agent-store %')
FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
"""


class PostgresConnections:
    """The store's connections, sampled every `interval_s` in a thread of their own while a step runs: the
    peak of all of them, of agents' own and of the agent store actors' (`actors/agent_store_actor.py`)."""

    def __init__(self, database_url: str, interval_s: float = 0.5) -> None:
        self._server, self._name = _server_and_database(database_url)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._peaks = {"all": 0, "agents": 0, "agent_store_actors": 0}
        self._samples = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._sample()), name="pg-connections",
                                        daemon=True)

    @classmethod
    def start_for(cls, database_url: str) -> PostgresConnections | None:
        """Sampling started; None on SQLite."""
        if not database_url.startswith("postgresql"):
            return None
        sampler = cls(database_url)
        sampler._thread.start()
        return sampler

    async def _sample(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(f"{self._server}/{self._name}", timeout=10)
        try:
            while not self._stop.is_set():
                row = await connection.fetchrow(_CONNECTION_OWNERS, self._name)
                for key, value in zip(self._peaks, row, strict=True):
                    self._peaks[key] = max(self._peaks[key], int(value))
                self._samples += 1
                await asyncio.sleep(self._interval_s)
        finally:
            await connection.close()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=30)
        return {f"peak_{key}": value for key, value in self._peaks.items()} | {"samples": self._samples}


def store_commits(database_url: str) -> int | None:
    """Write transactions of the store so far: PostgreSQL's committed transactions (reads included: the
    harness takes its own off), SQLite's writers' turns (one per write transaction, every process's); None
    when unknown."""
    if database_url.startswith("sqlite"):
        path = sqlite_file_path(database_url)
        return turns_taken(path) if path is not None else None
    if not database_url.startswith("postgresql"):
        return None

    async def read() -> int:
        import asyncpg

        server, name = _server_and_database(database_url)
        connection = await asyncpg.connect(f"{server}/{name}", timeout=10)
        try:
            value = await connection.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
        finally:
            await connection.close()
        return int(value)

    try:
        return asyncio.run(read())
    except Exception:
        return None
