"""On a multi-node Ray cluster the routing actors spread over the nodes (issue 7's cluster run).

A head and two worker nodes on this machine (`ray.cluster_utils.Cluster`, each node its own raylet), in a
subprocess: the test session's own Ray instance is single-node and a process joins one Ray cluster only.
The actors are the real ones, created through the gateway's `RayDirectory` with the options it deploys
them with (`num_cpus=0`, which lets Ray start them on any node); each answers its health check with the
node it runs on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_SCRIPT = """
import asyncio, json, sys
import ray
from ray.cluster_utils import Cluster
from actors.directory import RayDirectory
from config.settings import Settings

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="placement", log_to_driver=False)
    settings = Settings(database_url="sqlite+aiosqlite:///" + sys.argv[1], ray_namespace="placement",
                        secret_key_file=sys.argv[1] + ".key")
    directory = RayDirectory(settings)

    async def pings():
        inboxes = [directory.inbox(1, i) for i in range(1, 7)]
        agents = [directory.agent(1, u) for u in range(1, 7)]
        return ([await p.ping() for p in inboxes], [await p.ping() for p in agents])

    inboxes, agents = asyncio.run(pings())
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"nodes": nodes, "inboxes": [a["node_id"] for a in inboxes],
                      "agents": [a["node_id"] for a in agents]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _run(script: str, tmp_path: Path) -> Any:
    """Run a cluster script in a process of its own (a cluster per process); its last line, as JSON."""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store.db")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_inbox_and_agent_actors_spread_over_the_nodes_of_a_cluster(tmp_path: Path) -> None:
    placed = _run(_SCRIPT, tmp_path)
    assert len(placed["nodes"]) == 3
    hosts = set(placed["inboxes"]) | set(placed["agents"])
    assert hosts <= set(placed["nodes"])
    # Ray places actors that reserve no CPU at random over the alive nodes: twelve of them all on one
    # node would happen once in ~180,000 runs, so more than one node hosts them.
    assert len(hosts) >= 2, placed


_RESOURCE_SCRIPT = """
import asyncio, json, sys
import ray
from ray.cluster_utils import Cluster
from actors.directory import RayDirectory
from config.settings import Settings

# A head advertising no `routing` (as deploy/kubernetes/ray-cluster.yaml's) and one worker that does.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    worker = cluster.add_node(num_cpus=1, resources={"routing": 100000})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="placement", log_to_driver=False)
    settings = Settings(database_url="sqlite+aiosqlite:///" + sys.argv[1], ray_namespace="placement",
                        secret_key_file=sys.argv[1] + ".key", ray_actor_resource="routing")
    directory = RayDirectory(settings)

    async def pings():
        actors = [directory.inbox(1, i) for i in range(1, 5)] + [directory.agent(1, u) for u in range(1, 5)]
        return [(await p.ping())["node_id"] for p in actors]

    print(json.dumps({"worker": worker.node_id, "head": cluster.head_node.node_id, "placed": asyncio.run(pings())}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_routing_actors_stay_on_the_nodes_advertising_their_resource(tmp_path: Path) -> None:
    result = _run(_RESOURCE_SCRIPT, tmp_path)
    assert len(result["placed"]) == 8
    assert set(result["placed"]) == {result["worker"]}, result
