"""One three-node Ray cluster on this machine for every multi-node check of `make test`.

Starting a cluster (a head and two worker nodes, each its own raylet, `ray.cluster_utils.Cluster`) takes
seconds on these machines, so one subprocess runs the three checks in turn on the same cluster and prints
their findings as one JSON line; `tests/test_cluster_placement.py` and `tests/test_node_loss.py` assert on
it (through the session fixture `cluster_checks` in `tests/conftest.py`). The cluster is the deployed
shape: a head with no `routing` resource (as deploy/kubernetes/ray-cluster.yaml's) and two workers that
advertise it, with `tests/node_loss.py`'s quick health checks.

1. spread: actors created with the default options (no resource, `num_cpus=0`, which lets Ray start them
   on any node; namespace `placement`) spread over the nodes. They are stopped before the next check.
2. resource: actors created with `ray_actor_resource="routing"` (namespace `node-loss`) run only on the
   nodes advertising it, never the head.
3. node loss: every process of the worker node hosting most of those is SIGKILLed (the node killer of
   `tests/node_loss.py`); each must answer again from a new process on the surviving worker, and the GCS
   must declare the node dead.

A process joins one Ray cluster only, and the test session's own Ray instance is single-node: hence the
subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_SCRIPT = """
import asyncio, json, os, sys, time
import ray
from ray.cluster_utils import Cluster
from actors.ray_connection import RAY_SYSTEM_CONFIG
from actors.ray_directory import RayDirectory
from config.settings import Settings
from tests.fault_injection import actor_pid
from tests.node_loss import HEALTH_CHECK, worker_node_killer

os.environ.update(HEALTH_CHECK)
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "include_dashboard": False, "_system_config": RAY_SYSTEM_CONFIG})
killed = []
found = {}
try:
    workers = [cluster.add_node(num_cpus=1, resources={"routing": 100000}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="node-loss", log_to_driver=False, configure_logging=False)
    found["head"] = cluster.head_node.node_id
    found["workers"] = [w.node_id for w in workers]
    found["nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]

    # 1. spread: the default options
    spread = RayDirectory(Settings(database_url="sqlite+aiosqlite:///" + sys.argv[1] + ".spread",
                                   ray_namespace="placement", secret_key_file=sys.argv[1] + ".spread.key"))

    async def pings():
        inboxes = [spread.inbox(1, i) for i in range(1, 7)]
        agents = [spread.agent(1, u) for u in range(1, 7)]
        return ([await p.ping() for p in inboxes], [await p.ping() for p in agents])

    inboxes, agents = asyncio.run(pings())
    found["spread"] = {"inboxes": [a["node_id"] for a in inboxes], "agents": [a["node_id"] for a in agents]}
    spread.kill_namespace()

    # 2. resource: only on the nodes advertising `routing`
    settings = Settings(database_url="sqlite+aiosqlite:///" + sys.argv[1], ray_namespace="node-loss",
                        secret_key_file=sys.argv[1] + ".key", ray_actor_resource="routing")
    directory = RayDirectory(settings)
    names = [f"inbox:1:{i}" for i in range(1, 4)] + [f"agent:1:{u}" for u in range(1, 4)]
    for i in range(1, 4):
        directory.inbox(1, i)
        directory.agent(1, i)

    def where(name, timeout):
        handle = ray.get_actor(name, namespace="node-loss")
        return ray.get(handle.ping.remote(), timeout=timeout)["node_id"]

    before = {n: where(n, 60) for n in names}
    found["resource"] = before

    # 3. node loss
    pids = {n: actor_pid(n, "node-loss", timeout_s=30) for n in names}
    # Each node's workers at the niceness the head's configuration sets (Ray's default: 15).
    found["niceness"] = {n: os.getpriority(os.PRIO_PROCESS, pid) for n, pid in pids.items()}
    killed_at = time.monotonic()
    node_id, raylet_pid, affected = worker_node_killer(cluster, workers, killed)(pids)
    back, dead_after = {}, None
    while time.monotonic() - killed_at < 120 and (len(back) < len(affected) or dead_after is None):
        if dead_after is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == node_id):
            dead_after = time.monotonic() - killed_at
        for name in affected:
            if name not in back:
                try:
                    back[name] = (where(name, 2), time.monotonic() - killed_at)
                except Exception:
                    pass
        time.sleep(0.1)
    after = {n: where(n, 30) for n in names}
    found["node_loss"] = {"killed": node_id, "before": before, "after": after, "affected": affected, "back": back,
                          "dead_after": dead_after, "pids": pids,
                          "new_pids": {n: actor_pid(n, "node-loss") for n in names}}
finally:
    # What was found so far, even when a later check failed: the earlier ones are still judged.
    print(json.dumps(found), flush=True)
    ray.shutdown()
    for node in killed:
        try:
            cluster.remove_node(node, allow_graceful=False)
        except Exception:
            pass
    cluster.shutdown()
"""


def run_cluster_checks(workdir: Path) -> dict[str, Any]:
    """Run the three checks on one cluster; what they found (a check that failed is missing), with `stderr`."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(workdir / "store.db")], capture_output=True,
                          text=True, timeout=400)
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    found: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    found["returncode"] = done.returncode
    found["stderr"] = done.stderr[-3000:]
    return found
