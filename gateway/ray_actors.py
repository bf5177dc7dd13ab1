"""The gateway's live routing actors (inbox, agent, sender) as Ray's state API lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

# Run in a fresh process: Ray settles its authentication mode once per process, from the environment.
_QUERY = """
import json, sys
from ray.util.state import list_actors
rows = list_actors(address=sys.argv[1], filters=[("ray_namespace", "=", sys.argv[2])], limit=10_000, timeout=30,
                   detail=True, raise_on_missing_output=False)
print(json.dumps([{"name": r.name, "class_name": r.class_name, "state": r.state, "pid": r.pid,
                   "node_id": r.node_id, "restarts": getattr(r, "num_restarts", 0)} for r in rows]))
"""

KINDS = ("inbox", "agent", "sender")


class StateQueryFailed(Exception):
    pass


@dataclass(frozen=True)
class ActorRow:
    name: str
    kind: str
    class_name: str
    state: str
    pid: int | None
    node_id: str
    restarts: int


def routing_actors(dashboard_url: str, namespace: str, token_auth: bool, timeout_s: float = 90) -> list[ActorRow]:
    """The namespace's inbox, agent and sender actors (alive or restarting), by kind then name."""
    env = dict(os.environ)
    if token_auth:
        env["RAY_AUTH_MODE"] = "token"
    try:
        done = subprocess.run([sys.executable, "-c", _QUERY, dashboard_url, namespace], capture_output=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise StateQueryFailed(f"Ray's state API at {dashboard_url} did not answer in {timeout_s:.0f} s") from exc
    try:
        rows = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        last = (done.stderr.decode().strip().splitlines() or ["no output"])[-1]
        raise StateQueryFailed(f"Ray's state API at {dashboard_url} failed: {last}") from exc
    found = []
    for row in rows:
        name = row.get("name") or ""
        kind = name.split(":", 1)[0]
        if kind not in KINDS or row.get("state") == "DEAD":
            continue
        found.append(ActorRow(name=name, kind=kind, class_name=row.get("class_name") or "", state=row["state"],
                              pid=row.get("pid") or None, node_id=(row.get("node_id") or "")[:8],
                              restarts=int(row.get("restarts") or 0)))
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.name))
