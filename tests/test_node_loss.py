"""A Ray worker node lost: the smoke variant of `tests/node_loss.py` (whose full run, with webhooks, agents and
the invariants, takes ~90 s here and runs in `make soak`).

A head and two worker nodes advertising `routing` on this machine, in a subprocess (the session's own Ray
instance is single-node). Routing actors are created through the gateway's `RayDirectory` with the
deployed options; every process of the worker node hosting most of them is SIGKILLed (the same node
killer as the full run); each actor must answer again from the surviving worker, and the GCS must have
declared the node dead within the bound its health-check settings give.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, os, sys, time
import ray
from ray.cluster_utils import Cluster
from actors.directory import RayDirectory
from config.settings import Settings
from tests.fault_injection import actor_pid
from tests.node_loss import HEALTH_CHECK, worker_node_killer

os.environ.update(HEALTH_CHECK)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
killed = []
try:
    workers = [cluster.add_node(num_cpus=1, resources={"routing": 100000}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="node-loss", log_to_driver=False, configure_logging=False)
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
    pids = {n: actor_pid(n, "node-loss", timeout_s=30) for n in names}
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
    print(json.dumps({"killed": node_id, "workers": [w.node_id for w in workers], "before": before,
                      "after": after, "affected": affected, "back": back, "dead_after": dead_after,
                      "pids": pids, "new_pids": {n: actor_pid(n, "node-loss") for n in names}}))
finally:
    ray.shutdown()
    for node in killed:
        try:
            cluster.remove_node(node, allow_graceful=False)
        except Exception:
            pass
    cluster.shutdown()
"""


def test_routing_actors_of_a_lost_worker_node_answer_again_from_the_surviving_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "store.db")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: result[k] for k in ("affected", "back", "dead_after")}))
    survivor = ({w for w in result["workers"]} - {result["killed"]}).pop()
    # The killed node hosted some of them (the node hosting the most was chosen), and only workers host any.
    assert result["affected"] and set(result["before"].values()) <= set(result["workers"])
    assert set(result["affected"]) == {n for n, node in result["before"].items() if node == result["killed"]}
    # Each answers again, from a new process on the surviving worker; the others never moved.
    assert set(result["back"]) == set(result["affected"]), result
    assert set(result["after"].values()) == {survivor}
    assert all(result["new_pids"][n] != result["pids"][n] for n in result["affected"])
    assert all(result["new_pids"][n] == result["pids"][n] for n in result["before"] if n not in result["affected"])
    # Declared dead after period x threshold = 1.5 s of failed health checks (and a busy machine's slack).
    assert result["dead_after"] is not None and result["dead_after"] < 15, result
