"""The routing actors' own Prometheus metrics, through Ray (`ray.util.metrics`).

Each Ray node exports what its actors record on its metrics port (`metrics-export-port`, 8080 in
deploy/kubernetes/), with Ray's `ray_` prefix: e.g. `ray_wa_router_inbox_offers_total`. Labels are the
organization and the inbox ids only, never a customer. Metric objects are made on first use in each actor
process (a Ray metric belongs to the process that records it), and recording never raises into routing:
a metric lost is better than a step failed.

These are the hooks `actors/inbox_actor.py` calls, one line each (README, "Operations", lists where).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

TAGS = ("organization", "inbox")
OFFER_OUTCOMES = ("made", "accepted", "declined", "missed", "rescinded")
STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]

_metrics: dict[str, Any] = {}


def _get() -> dict[str, Any]:
    if not _metrics:
        from ray.util import metrics

        _metrics.update(
            offers=metrics.Counter("wa_router_inbox_offers", "Offers by outcome (made, accepted, declined, missed, "
                                   "rescinded)", tag_keys=(*TAGS, "outcome")),
            routed=metrics.Counter("wa_router_inbox_messages_routed", "Customer messages an inbox actor routed "
                                   "(new conversations and follow-ups)", tag_keys=TAGS),
            step=metrics.Histogram("wa_router_inbox_step_seconds", "Duration of an inbox actor's step (ingest, "
                                   "route, accept, close, ...)", boundaries=STEP_BUCKETS, tag_keys=(*TAGS, "step")),
            queue=metrics.Gauge("wa_router_inbox_queue_depth", "Conversations waiting in the inbox actor's queue",
                                tag_keys=TAGS),
            activations=metrics.Counter("wa_router_inbox_activations", "Inbox actor activations (first use, "
                                        "restart after a crash or a lost node)", tag_keys=TAGS),
        )
    return _metrics


def _tags(org_id: int, inbox_id: int, **more: str) -> dict[str, str]:
    return {"organization": str(org_id), "inbox": str(inbox_id), **more}


def _record(what: str, action: Any) -> None:
    try:
        action(_get())
    except Exception:  # never into routing
        log.debug("metric %s not recorded", what, exc_info=True)


def offer(org_id: int, inbox_id: int, outcome: str) -> None:
    """An offer made, or ended with `outcome` (accepted, declined, missed, rescinded)."""
    _record("offers", lambda m: m["offers"].inc(1, tags=_tags(org_id, inbox_id, outcome=outcome)))


def routed(org_id: int, inbox_id: int, messages: int = 1) -> None:
    if messages > 0:
        _record("routed", lambda m: m["routed"].inc(messages, tags=_tags(org_id, inbox_id)))


def step(org_id: int, inbox_id: int, name: str, seconds: float) -> None:
    _record("step", lambda m: m["step"].observe(seconds, tags=_tags(org_id, inbox_id, step=name)))


@contextmanager
def timed(org_id: int, inbox_id: int, name: str) -> Iterator[None]:
    """`with timed(org, inbox, "ingest"):` records the block's duration as `step` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        step(org_id, inbox_id, name, time.perf_counter() - started)


def queue_depth(org_id: int, inbox_id: int, waiting: int) -> None:
    _record("queue", lambda m: m["queue"].set(waiting, tags=_tags(org_id, inbox_id)))


def activated(org_id: int, inbox_id: int) -> None:
    _record("activations", lambda m: m["activations"].inc(1, tags=_tags(org_id, inbox_id)))
