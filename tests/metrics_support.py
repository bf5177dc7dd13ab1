"""What actors recorded through Ray, read as Prometheus reads it: the session node's metrics export.

The session's Ray instance is one node; its export carries every actor's metrics with Ray's `ray_` prefix and
labels of its own (component, worker, session), over which `figure` sums. Actors' metrics reach it every
second (`metrics_report_interval_ms` in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually

Samples = list[tuple[str, dict[str, str], float]]


def exported(org_id: int) -> Samples:
    """The organization's samples on the node's export: (name, labels, value)."""
    node = ray._private.worker.global_worker.node
    assert node is not None, "Ray is not initialized"
    port = node.metrics_export_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.labels.get("organization") == str(org_id)]


def figure(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` that carry these labels (0 when none does)."""
    wanted = labels.items()
    return sum(value for sample, found, value in samples if sample == name and wanted <= found.items())


def settled(org_id: int, figures: Callable[[Samples], dict[str, float]], expected: dict[str, float],
            timeout: float = 15.0) -> Samples:
    """The organization's samples once `figures` of them reads `expected` (named figures); an assertion error
    showing what the export read last otherwise."""
    last: dict[str, float] = {}

    def check() -> Samples | None:
        samples = exported(org_id)
        last.clear()
        last.update(figures(samples))
        return samples if all(last.get(name) == value for name, value in expected.items()) else None

    try:
        found: Samples = eventually(check, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(f"expected {expected}; the export read {last}") from None
    return found
