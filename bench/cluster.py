"""A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and N worker nodes, each
its own raylet), in a process of its own that the gateway joins with `WA_ROUTER_RAY_ADDRESS`.

`python -m bench.cluster WORKERS DASHBOARD_PORT` prints one JSON line (`{"address": ..., "nodes": ...}`)
once every node is up, then keeps the cluster until its standard input closes or says `quit`. The
raylets, GCS and actor processes are its descendants, so the harness's process sampler counts them.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(argv: list[str]) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from actors.ray_connection import RAY_SYSTEM_CONFIG
    from bench.counters import short_node_id

    workers, dashboard_port = int(argv[0]), int(argv[1])
    # Routing actors reserve no CPU (num_cpus=0): a node's CPU count only bounds Ray's own task workers.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "_system_config": RAY_SYSTEM_CONFIG})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        nodes: list[dict[str, Any]] = [{"node_id": short_node_id(n["NodeID"]), "head": n.get("Resources", {}).get(
            "node:__internal_head__") is not None} for n in ray.nodes() if n.get("Alive")]
        ray.shutdown()
        print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
        for line in sys.stdin:
            if line.strip() == "quit":
                break
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
