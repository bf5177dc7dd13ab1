"""Recording an actor's Prometheus metrics through Ray (`ray.util.metrics`): made once, never raising.

A Ray metric belongs to the process that records it, and each actor runs in a process of its own: a
`MetricRecorder` makes its metric objects on first use, so once per actor. Recording never raises into
the caller: a metric lost is better than a routing step or a send failed. The first failure of each metric
is logged as a warning (a broken metric is worth knowing about), later ones at debug level (no log flood
on the hot path).

Each Ray node exports what its actors record on its metrics port (`metrics-export-port`, 8080 in
deploy/kubernetes/), with Ray's `ray_` prefix: `wa_router_inbox_offers` is scraped as
`ray_wa_router_inbox_offers_total`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class MetricRecorder:
    """`make(ray.util.metrics)` builds the metrics by name; `record(name, action)` applies `action` to one."""

    def __init__(self, make: Callable[[ModuleType], dict[str, Any]]) -> None:
        self._make = make
        self._metrics: dict[str, Any] = {}
        self._failed: set[str] = set()

    def record(self, name: str, action: Callable[[Any], object]) -> None:
        try:
            if not self._metrics:
                from ray.util import metrics

                self._metrics.update(self._make(metrics))
            action(self._metrics[name])
        except Exception:  # never into routing or sending
            first = name not in self._failed
            self._failed.add(name)
            log.log(logging.WARNING if first else logging.DEBUG, "metric %s not recorded", name, exc_info=True)


@functools.lru_cache(maxsize=4096)
def tags(**labels: object) -> dict[str, str]:
    """The tags dict for these labels, made once and reused (Ray copies it on each record; never mutate it).

    Every label is bounded (organizations, inboxes, numbers, outcomes, Meta's error codes): so is the cache."""
    return {key: str(value) for key, value in labels.items()}
