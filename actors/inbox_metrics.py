"""The routing actors' own Prometheus metrics, through Ray (`actors.metric_recorder`).

Labels are the organization and the inbox ids only, never a customer. Exported by the node the inbox actor
runs on with Ray's `ray_` prefix: e.g. `ray_wa_router_inbox_offers_total`.

These are the hooks `actors/inbox_actor.py` calls, one line each (README, "Operations", lists where); an agent's
actor counts the follow-ups the intake told it directly (`routed`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from actors.metric_recorder import MetricRecorder, tags

if TYPE_CHECKING:
    from actors.transaction_state import TxState

TAGS = ("organization", "inbox")
OFFER_OUTCOMES = ("made", "accepted", "declined", "missed", "rescinded")
STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
# From a conversation's first message to its first offer: instant with an agent free, minutes in a busy queue.
TIME_TO_OFFER_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]
# From an offer to its accept: an agent's reaction, bounded by the inbox's reassign_after_s (1 to 900 s).
TIME_TO_ACCEPT_BUCKETS = [0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 900.0]


def _make(metrics: ModuleType) -> dict[str, Any]:
    return {
        "offers": metrics.Counter("wa_router_inbox_offers", "Offers by outcome (made, accepted, declined, missed, "
                                  "rescinded)", tag_keys=(*TAGS, "outcome")),
        "routed": metrics.Counter("wa_router_inbox_messages_routed", "Customer messages routed to an inbox's "
                                  "conversations (new conversations and follow-ups; a follow-up of a conversation an "
                                  "agent holds is counted by the agent told of it)", tag_keys=TAGS),
        "step": metrics.Histogram("wa_router_inbox_step_seconds", "Duration of an inbox actor's step (ingest, "
                                  "route, accept, close, ...)", boundaries=STEP_BUCKETS, tag_keys=(*TAGS, "step")),
        "queue": metrics.Gauge("wa_router_inbox_queue_depth", "Conversations waiting in the inbox actor's queue",
                               tag_keys=TAGS),
        "activations": metrics.Counter("wa_router_inbox_activations", "Inbox actor activations (first use, "
                                       "restart after a crash or a lost node)", tag_keys=TAGS),
        "reassignments": metrics.Counter("wa_router_inbox_reassignments", "Conversations offered again to another "
                                         "agent than the one who last had them (after a missed or declined offer, "
                                         "a rescinded one, a transfer back to the queue)", tag_keys=TAGS),
        "time_to_offer": metrics.Histogram("wa_router_inbox_time_to_offer_seconds", "From a conversation's first "
                                           "message to its first offer", boundaries=TIME_TO_OFFER_BUCKETS,
                                           tag_keys=TAGS),
        "time_to_accept": metrics.Histogram("wa_router_inbox_time_to_accept_seconds", "From an offer made to its "
                                            "accept", boundaries=TIME_TO_ACCEPT_BUCKETS, tag_keys=TAGS),
    }


_recorder = MetricRecorder(_make)


def offer(org_id: int, inbox_id: int, outcome: str) -> None:
    """An offer made, or ended with `outcome` (accepted, declined, missed, rescinded)."""
    _recorder.record("offers", lambda m: m.inc(1, tags=tags(organization=org_id, inbox=inbox_id, outcome=outcome)))


def offer_made(org_id: int, inbox_id: int, waiting: TxState, offered: TxState) -> None:
    """An offer committed (`waiting` became `offered`): made; the conversation's first offer is its time to
    offer, an offer to another agent than the one who last had it a reassignment."""
    offer(org_id, inbox_id, "made")
    user_id = offered.offered_to
    if waiting.never_offered:
        if offered.offered_at is not None:
            seconds = (offered.offered_at - waiting.waiting_since).total_seconds()
            _recorder.record("time_to_offer", lambda m: m.observe(seconds, tags=tags(organization=org_id,
                                                                                        inbox=inbox_id)))
    elif user_id is not None and waiting.moves_to(user_id):
        _recorder.record("reassignments", lambda m: m.inc(1, tags=tags(organization=org_id, inbox=inbox_id)))


def offer_accepted(org_id: int, inbox_id: int, offered: TxState, assigned: TxState) -> None:
    """An offer accepted (`offered` became `assigned`): its time to accept."""
    offer(org_id, inbox_id, "accepted")
    if offered.offered_at is not None and assigned.assigned_at is not None:
        seconds = (assigned.assigned_at - offered.offered_at).total_seconds()
        _recorder.record("time_to_accept", lambda m: m.observe(seconds, tags=tags(organization=org_id,
                                                                                     inbox=inbox_id)))


def routed(org_id: int, inbox_id: int, messages: int = 1) -> None:
    if messages > 0:
        _recorder.record("routed", lambda m: m.inc(messages, tags=tags(organization=org_id, inbox=inbox_id)))


def step(org_id: int, inbox_id: int, name: str, seconds: float) -> None:
    _recorder.record("step", lambda m: m.observe(seconds, tags=tags(organization=org_id, inbox=inbox_id, step=name)))


@contextmanager
def timed(org_id: int, inbox_id: int, name: str) -> Iterator[None]:
    """`with timed(org, inbox, "ingest"):` records the block's duration as `step` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        step(org_id, inbox_id, name, time.perf_counter() - started)


def queue_depth(org_id: int, inbox_id: int, waiting: int) -> None:
    _recorder.record("queue", lambda m: m.set(waiting, tags=tags(organization=org_id, inbox=inbox_id)))


def activated(org_id: int, inbox_id: int) -> None:
    _recorder.record("activations", lambda m: m.inc(1, tags=tags(organization=org_id, inbox=inbox_id)))
