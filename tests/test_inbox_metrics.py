"""The routing actors' Ray metrics (`actors/inbox_metrics.py`) reach the node's Prometheus export."""

from __future__ import annotations

import random
from typing import Any

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually


@ray.remote(num_cpus=0)
class _Recorder:
    def record(self, org_id: int, inbox_id: int) -> None:
        from actors import inbox_metrics

        inbox_metrics.activated(org_id, inbox_id)
        for outcome in ("made", "made", "accepted", "missed"):
            inbox_metrics.offer(org_id, inbox_id, outcome)
        inbox_metrics.routed(org_id, inbox_id, 3)
        inbox_metrics.step(org_id, inbox_id, "ingest", 0.004)
        with inbox_metrics.timed(org_id, inbox_id, "accept"):
            pass
        inbox_metrics.queue_depth(org_id, inbox_id, 5)


def _exported(port: int, org: str) -> dict[tuple[str, str], float] | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("organization") == org:
                found[(s.name, s.labels.get("outcome") or s.labels.get("step") or s.labels.get("le") or "")] = s.value
    return found if ("ray_wa_router_inbox_queue_depth", "") in found else None


def test_actor_metrics_are_exported_by_the_node(ray_instance: None) -> None:
    org_id, inbox_id = random.randrange(10**9, 10**10), 7
    recorder: Any = _Recorder.remote()  # type: ignore[attr-defined]
    ray.get(recorder.record.remote(org_id, inbox_id))
    port = ray._private.worker.global_worker.node.metrics_export_port
    found = eventually(lambda: _exported(port, str(org_id)), timeout=40, interval=1,
                       what="the actor's metrics on the node's export port")
    assert found[("ray_wa_router_inbox_offers_total", "made")] == 2
    assert found[("ray_wa_router_inbox_offers_total", "accepted")] == 1
    assert found[("ray_wa_router_inbox_offers_total", "missed")] == 1
    assert found[("ray_wa_router_inbox_messages_routed_total", "")] == 3
    assert found[("ray_wa_router_inbox_activations_total", "")] == 1
    assert found[("ray_wa_router_inbox_step_seconds_count", "ingest")] == 1
    assert found[("ray_wa_router_inbox_step_seconds_count", "accept")] == 1
    assert found[("ray_wa_router_inbox_queue_depth", "")] == 5
    ray.kill(recorder)
