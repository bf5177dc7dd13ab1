"""The outbound senders' Prometheus metrics, through Ray (`actors.metric_recorder`).

Labels are the organization and the sending number (`phone_number_id`: one sender actor per number), and for
failures and retries Meta's numeric error code; never a customer. Exported by the node the sender actor runs
on with Ray's `ray_` prefix: e.g. `ray_wa_router_sender_messages_sent_total`.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

import httpx

from actors.metric_recorder import MetricRecorder, tags
from meta.graph_client import GraphAPIError

TAGS = ("organization", "phone_number_id")


def _make(metrics: ModuleType) -> dict[str, Any]:
    return {
        "sent": metrics.Counter("wa_router_sender_messages_sent", "Outbound messages Meta accepted",
                                tag_keys=TAGS),
        "failed": metrics.Counter("wa_router_sender_messages_failed", "Outbound messages failed for good, by Meta's "
                                  "error code (`transport`: Meta unreachable or timed out; `none`: an answer "
                                  "without a code)", tag_keys=(*TAGS, "code")),
        "retries": metrics.Counter("wa_router_sender_retries", "Send attempts that failed transiently and were "
                                   "queued again, by Meta's error code", tag_keys=(*TAGS, "code")),
        "queue": metrics.Gauge("wa_router_sender_queue_depth", "Outbound messages waiting in the outbox for the "
                               "number (queued, sending, or waiting for a retry)", tag_keys=TAGS),
    }


_recorder = MetricRecorder(_make)


def error_code(error: GraphAPIError) -> str:
    """Meta's numeric code; `transport` when Meta was never heard (unreachable, timed out); `none` otherwise."""
    if error.code is not None:
        return str(error.code)
    return "transport" if isinstance(error.__cause__, httpx.HTTPError) else "none"


def sent(org_id: int, phone_number_id: str) -> None:
    _recorder.record("sent", lambda m: m.inc(1, tags=tags(organization=org_id, phone_number_id=phone_number_id)))


def failed(org_id: int, phone_number_id: str, error: GraphAPIError) -> None:
    code = error_code(error)
    _recorder.record("failed", lambda m: m.inc(1, tags=tags(organization=org_id, phone_number_id=phone_number_id,
                                                                code=code)))


def retried(org_id: int, phone_number_id: str, error: GraphAPIError) -> None:
    code = error_code(error)
    _recorder.record("retries", lambda m: m.inc(1, tags=tags(organization=org_id, phone_number_id=phone_number_id,
                                                                 code=code)))


def queue_depth(phone_number_id: str, waiting_by_org: dict[int, int], known_orgs: Iterable[int]) -> None:
    """The number's pending outbox per organization; `known_orgs` (those reported before) without any read 0."""
    def record(gauge: Any) -> None:
        for org_id in {*waiting_by_org, *known_orgs}:
            gauge.set(waiting_by_org.get(org_id, 0), tags=tags(organization=org_id, phone_number_id=phone_number_id))

    _recorder.record("queue", record)
