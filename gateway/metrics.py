"""The gateway's Prometheus metrics, served at `/metrics` (one registry per app: tests run several in a process).

HTTP requests by route template (never the raw path: ids would explode the series), webhook signature
failures, duplicates and intake latency, and per-inbox gauges from the supervisor statistics, labelled
by organization and inbox id only (never by customer). The inbox gauges are computed from the store in
the background every `metrics_stats_interval_s` and served from that snapshot, so a scrape costs no query;
every gateway exports the same inbox figures (aggregate them with `max by (organization, inbox)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.db import Database
from store.stats import InboxStats, inbox_stats
from store.tables import Inbox
from store.types import utcnow

log = logging.getLogger(__name__)

INTAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class InboxStatsCollector(Collector):
    """Serves the last snapshot of every inbox's statistics as gauges."""

    def __init__(self) -> None:
        self.snapshot: list[tuple[int, InboxStats]] = []
        self.refreshed_at: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["organization", "inbox"]
        queue = GaugeMetricFamily("wa_router_inbox_contacts_in_queue", "Conversations waiting (queued or offered)",
                                  labels=labels)
        oldest = GaugeMetricFamily("wa_router_inbox_oldest_contact_age_seconds", "Wait of the oldest waiting "
                                   "conversation (0 when none waits)", labels=labels)
        agents = GaugeMetricFamily("wa_router_inbox_agents", "The inbox's agents by state (on_contact, available, "
                                   "away, offline)", labels=[*labels, "state"])
        service = GaugeMetricFamily("wa_router_inbox_service_level", "Answered within the threshold / (answered + "
                                    "abandoned), over the stats window", labels=labels)
        asa = GaugeMetricFamily("wa_router_inbox_average_speed_of_answer_seconds", "Mean queued-to-answered time "
                                "over the stats window", labels=labels)
        aht = GaugeMetricFamily("wa_router_inbox_average_handle_time_seconds", "Mean assignment-to-close time over "
                                "the stats window", labels=labels)
        contacts = GaugeMetricFamily("wa_router_inbox_contacts", "Contacts over the stats window by outcome "
                                     "(entered, answered, abandoned)", labels=[*labels, "outcome"])
        offers = GaugeMetricFamily("wa_router_inbox_offers", "Offers over the stats window by outcome (made, "
                                   "accepted, declined, missed)", labels=[*labels, "outcome"])
        for org_id, s in self.snapshot:
            key = [str(org_id), str(s.inbox_id)]
            queue.add_metric(key, s.contacts_in_queue)
            oldest.add_metric(key, s.oldest_contact_age_s or 0.0)
            for state, value in (("on_contact", s.agents_on_contact), ("available", s.agents_available),
                                 ("away", s.agents_away), ("offline", s.agents_offline)):
                agents.add_metric([*key, state], value)
            # No contact in the window: no service level (a gauge with no sample, not a made-up 0 or 1).
            for family, average in ((service, s.service_level), (asa, s.average_speed_of_answer_s),
                                    (aht, s.average_handle_time_s)):
                if average is not None:
                    family.add_metric(key, average)
            for outcome, value in (("entered", s.contacts), ("answered", s.answered), ("abandoned", s.abandoned)):
                contacts.add_metric([*key, outcome], value)
            for outcome, kind in (("made", "offered"), ("accepted", "accepted"), ("declined", "declined"),
                                  ("missed", "missed")):
                offers.add_metric([*key, outcome], s.offers[kind])
        yield from (queue, oldest, agents, service, asa, aht, contacts, offers)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("wa_router_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.request_seconds = Histogram("wa_router_http_request_duration_seconds", "HTTP request duration",
                                         ["method", "route"], registry=self.registry)
        self.signature_failures = Counter("wa_router_webhook_signature_failures",
                                          "Webhook deliveries refused for their signature (missing or mismatch)",
                                          ["reason"], registry=self.registry)
        self.messages = Counter("wa_router_webhook_messages", "Inbound messages stored (new)", registry=self.registry)
        self.duplicates = Counter("wa_router_webhook_duplicate_messages",
                                  "Inbound messages redelivered by Meta and already stored", registry=self.registry)
        self.intake_seconds = Histogram("wa_router_webhook_intake_seconds", "Webhook delivery received to "
                                        "acknowledged (stored durably)", buckets=INTAKE_BUCKETS,
                                        registry=self.registry)
        self.inboxes = InboxStatsCollector()
        self.registry.register(self.inboxes)
        self._task: asyncio.Task[None] | None = None

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def refresh_inboxes(self, db: Database, window_s: int) -> None:
        async with db.session() as session:
            inboxes = list((await session.scalars(select(Inbox).order_by(Inbox.org_id, Inbox.id))).all())
            computed = await inbox_stats(session, inboxes, utcnow(), window_s)
        orgs = {i.id: i.org_id for i in inboxes}
        self.inboxes.snapshot = [(orgs[s.inbox_id], s) for s in computed]
        self.inboxes.refreshed_at = time.monotonic()

    def start(self, db: Database, interval_s: float, window_s: int) -> None:
        if interval_s <= 0:
            return

        async def refresh_forever() -> None:
            while True:
                try:
                    await self.refresh_inboxes(db, window_s)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the store away for a moment: the last snapshot stays served
                    log.warning("inbox metrics not refreshed", exc_info=True)
                await asyncio.sleep(interval_s)

        self._task = asyncio.create_task(refresh_forever(), name="wa-router-inbox-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this gateway: HTTP requests by route template, webhook intake, per-inbox figures."""
    body, content_type = request.app.state.metrics.render()
    return Response(content=body, media_type=content_type)


def of(request: Request) -> GatewayMetrics | None:
    """The app's metrics (None in an app built without them)."""
    found: GatewayMetrics | None = getattr(request.app.state, "metrics", None)
    return found


class RequestMetrics:
    """ASGI middleware counting HTTP requests by the matched route's template (`unmatched` for none)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any response start is answered 500 by the server

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.request_seconds.labels(method, template).observe(time.perf_counter() - started)
