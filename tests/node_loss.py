"""A Ray worker node lost under load: the fault-injection engine on a three-node cluster on this machine.

A head (no `routing` resource, as deploy/kubernetes/ray-cluster.yaml's) and two worker nodes advertising
`routing` (`ray.cluster_utils.Cluster`, each node its own raylet), PostgreSQL, the gateway as its own
process joined to the head (`WA_ROUTER_RAY_ACTOR_RESOURCE=routing`: inbox, agent and sender actors on the
workers). While signed webhooks stream in and agents work (offers, replies, closes, presence), every
process of the worker node hosting the most routing actors is SIGKILLed at once: its raylet and every
process under it (the actors' workers), plus the node's other Ray processes. Ray's GCS notices the node
gone after its health checks fail (`RAY_health_check_period_ms` x `RAY_health_check_failure_threshold`)
and restarts the detached actors (`max_restarts=-1`) on the surviving worker, where they reload their
state from the store. The engine's invariants then hold the run to 0 lost, duplicated, double-assigned,
stuck; every offer pending at the kill resolved; every reply sent once.

It reports the time from the kill to the first offer made by an affected inbox and to the first customer
message delivered to an affected agent's stream (events made after the kill only).

`python -m tests.node_loss` runs the smoke variant (`make test` runs it through tests/test_node_loss.py);
`--long` the soak's (`wa-router soak` runs it after the fault-injection soak). The last line printed is a
JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import ray

from meta.simulator.state import SimulatorState
from tests.fault_injection import SHORT, FaultPlan, NodeKiller, _database, run_fault_injection

# How fast the GCS declares a silent node dead: every `period` a health check, dead after `threshold`
# failures in a row, each check given up after `timeout` (Ray's defaults: 3000 ms, 5, 10000 ms and a
# first check 5000 ms after a node joins). A SIGKILLed raylet refuses connections at once, so detection
# takes about period x threshold: 1.5 s here, ~15 s with the defaults.
HEALTH_CHECK = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_initial_delay_ms": "1000"}

# One node kill and nothing else: what is measured is that loss alone.
_NODE_ONLY = replace(SHORT, inbox_kills=0, agent_kills=0, gateway_kills=0, agent_store_kills=0, sender_kills=0,
                    node_kills=1)
SMOKE = replace(_NODE_ONLY, messages=300, send_rate_per_s=20.0, agents=4, customers_per_inbox=4,
                quiescence_timeout_s=60.0)
LONG = replace(_NODE_ONLY, messages=3000, send_rate_per_s=30.0, quiescence_timeout_s=120.0)


def _node_processes(node: Any) -> list[psutil.Process]:
    """Every live process of a Ray node: the ones it started (raylet, log monitor...) and their descendants."""
    found: dict[int, psutil.Process] = {}
    for infos in node.all_processes.values():
        for info in infos:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(info.process.pid)
                for process in [root, *root.children(recursive=True)]:
                    found[process.pid] = process
    return list(found.values())


def worker_node_killer(cluster: Any, workers: list[Any], killed: list[Any]) -> NodeKiller:
    """SIGKILLs every process of the worker node hosting the most of the given actors (by pid)."""

    def kill(actor_pids: dict[str, int]) -> tuple[str, int, list[str]]:
        trees = {node.node_id: (node, _node_processes(node)) for node in workers if node not in killed}
        hosted = {node_id: sorted(name for name, pid in actor_pids.items() if pid in {p.pid for p in processes})
                  for node_id, (_node, processes) in trees.items()}
        node_id = max(hosted, key=lambda n: len(hosted[n]))
        node, processes = trees[node_id]
        raylet_pid = int(node.all_processes["raylet"][0].process.pid)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        killed.append(node)
        return node_id, raylet_pid, hosted[node_id]

    return kill


def run(plan: FaultPlan, log: Any = print, health_check: dict[str, str] | None = None) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    from actors.ray_connection import RAY_SYSTEM_CONFIG
    from gateway.background_server import BackgroundServer
    from meta.simulator.app import create_simulator_app

    health_check = HEALTH_CHECK if health_check is None else health_check
    os.environ.update(health_check)  # read by the GCS and raylets the cluster starts below
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": RAY_SYSTEM_CONFIG})
    killed: list[Any] = []
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"routing": 100000}) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="wa-router-node-loss", log_to_driver=False,
                 configure_logging=False)
        state = SimulatorState()
        with (BackgroundServer(create_simulator_app(state)) as simulator,
              tempfile.TemporaryDirectory(prefix="node-loss-") as tmp, _database("postgres", Path(tmp)) as url):
            report = run_fault_injection(plan, database_url=url, database="postgres", simulator=state,
                                         simulator_url=simulator.url, workdir=Path(tmp), log=log,
                                         gateway_env={"WA_ROUTER_RAY_ACTOR_RESOURCE": "routing"},
                                         node_killer=worker_node_killer(cluster, workers, killed))
            log(report.render())
            return {"ok": report.ok, "violations": [v.invariant for v in report.violations],
                    "kills": report.figures["kills"], "recoveries": report.figures["recoveries"],
                    "node_losses": report.figures["node_losses"], "summary": report.summary_line(),
                    "health_check": health_check or "Ray's defaults"}
    finally:
        ray.shutdown()
        for node in killed:  # its processes are gone; this reaps them and forgets the node
            with contextlib.suppress(Exception):
                cluster.remove_node(node, allow_graceful=False)
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Ray worker node SIGKILLed under load (a 3-node cluster here).")
    parser.add_argument("--long", action="store_true", help="the soak's sizes (default: the smoke variant)")
    parser.add_argument("--ray-default-health-check", action="store_true",
                        help="keep Ray's health-check defaults (detection ~15 s) instead of HEALTH_CHECK's 1.5 s")
    args = parser.parse_args(argv)
    result = run(LONG if args.long else SMOKE, log=lambda line: print(line, flush=True),
                 health_check={} if args.ray_default_health_check else None)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
