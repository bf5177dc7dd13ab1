"""On a multi-node Ray cluster the routing actors spread over the nodes, or stay on the nodes advertising
their resource when the gateway names one.

A head and two worker nodes on this machine, in a subprocess shared with `tests/test_node_loss.py`
(`tests/cluster_checks.py`: one cluster start for every multi-node check). The actors are the real ones,
created through the gateway's `RayDirectory` with the options it deploys them with; each answers its
health check with the node it runs on.
"""

from __future__ import annotations

from typing import Any

from actors.ray_connection import WORKER_NICENESS


def test_inbox_and_agent_actors_spread_over_the_nodes_of_a_cluster(cluster_checks: dict[str, Any]) -> None:
    assert "spread" in cluster_checks, cluster_checks["stderr"]
    placed = cluster_checks["spread"]
    assert len(cluster_checks["nodes"]) == 3
    hosts = set(placed["inboxes"]) | set(placed["agents"])
    assert hosts <= set(cluster_checks["nodes"])
    # Ray places actors that reserve no CPU at random over the alive nodes: twelve of them all on one
    # node would happen once in ~180,000 runs, so more than one node hosts them.
    assert len(hosts) >= 2, placed


def test_routing_actors_stay_on_the_nodes_advertising_their_resource(cluster_checks: dict[str, Any]) -> None:
    # The head advertises no `routing` (as deploy/kubernetes/ray-cluster.yaml's); both workers do.
    assert "resource" in cluster_checks, cluster_checks["stderr"]
    placed = cluster_checks["resource"]
    assert len(placed) == 6
    assert set(placed.values()) <= set(cluster_checks["workers"]), cluster_checks
    assert cluster_checks["head"] not in set(placed.values())


def test_routing_actors_on_every_node_run_at_the_gateways_niceness(cluster_checks: dict[str, Any]) -> None:
    # Set once, on the head (as `ray-cluster.yaml` sets it on every pod): the worker nodes' actors run at
    # niceness 0 too, not at Ray's 15 for batch workers.
    assert "niceness" in cluster_checks, cluster_checks["stderr"]
    assert len(cluster_checks["niceness"]) == 6
    assert set(cluster_checks["niceness"].values()) == {WORKER_NICENESS}, cluster_checks["niceness"]
