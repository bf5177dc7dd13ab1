"""A Ray worker node lost: the smoke variant of `tests/node_loss.py` (whose full run, with webhooks, agents and
the invariants, takes ~90 s here and runs in `make soak`).

A head and two worker nodes advertising `routing` on this machine, in a subprocess shared with
`tests/test_cluster_placement.py` (`tests/cluster_checks.py`; the session's own Ray instance is
single-node). Routing actors are created through the gateway's `RayDirectory` with the
deployed options; every process of the worker node hosting most of them is SIGKILLed (the same node
killer as the full run); each actor must answer again from the surviving worker, and the GCS must have
declared the node dead within the bound its health-check settings give.
"""

from __future__ import annotations

import json
from typing import Any


def test_routing_actors_of_a_lost_worker_node_answer_again_from_the_surviving_one(
        cluster_checks: dict[str, Any]) -> None:
    assert cluster_checks["returncode"] == 0 and "node_loss" in cluster_checks, cluster_checks["stderr"]
    result = {**cluster_checks["node_loss"], "workers": cluster_checks["workers"]}
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
