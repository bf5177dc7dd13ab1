"""The RayClusters bound how long a lost worker node goes unnoticed: every Ray container (head and workers, with
and without GCS fault tolerance) sets the health-check variables the node-loss run tunes, with the same values,
and those values give the bounds deploy/README.md states."""

from __future__ import annotations

from typing import Any

import pytest

from tests.node_loss import HEALTH_CHECK
from tests.test_deploy_manifests import REPO, documents, env_of


def ray_containers(name: str) -> list[dict[str, Any]]:
    (doc,) = documents(name)
    pods = [doc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in doc["spec"]["workerGroupSpecs"]]
    return [container for pod in pods for container in pod["spec"]["containers"]]


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "ray-cluster-gcs-ft.yaml"])
def test_every_ray_container_sets_the_health_checks_that_bound_node_loss(name: str) -> None:
    settings = []
    for container in ray_containers(name):
        env = env_of(container)
        assert set(HEALTH_CHECK) <= set(env), (container["name"], sorted(set(HEALTH_CHECK) - set(env)))
        settings.append({key: int(env[key]["value"]) for key in HEALTH_CHECK})
    assert len(settings) >= 2 and all(s == settings[0] for s in settings), settings  # head and workers alike
    period, threshold, timeout = (settings[0][f"RAY_health_check_{k}"] for k in
                                  ("period_ms", "failure_threshold", "timeout_ms"))
    # The bounds deploy/README.md gives: a killed raylet (refused at once) and a host that swallows packets.
    refused_s, silent_s = period * threshold / 1000, threshold * (period + timeout) / 1000
    text = (REPO / "deploy" / "README.md").read_text()
    assert f"~{refused_s:g} s" in text and f"{silent_s:g} s" in text, (refused_s, silent_s)
    assert all(f"`{key}`" in text for key in HEALTH_CHECK)
    # Quicker than Ray's defaults (15 s and 65 s), and never a single failed check.
    assert refused_s < 15 and silent_s < 65 and threshold >= 3
