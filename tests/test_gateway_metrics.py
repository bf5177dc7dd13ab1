"""`/metrics` after real traffic: requests by route template, webhook signature failures, duplicates, intake
latency, and the per-inbox gauges from the supervisor statistics (organization and inbox only)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer
from meta.simulator.state import SimulatorState
from meta.simulator.webhook_sender import WebhookSender, encode
from tests.routing_support import customer_id, scenario
from tests.support import Gateway, eventually, text_from


@pytest.fixture(scope="module")
def metered_gateway(ray_instance: None, simulator: tuple[SimulatorState, str],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own (its counters start at zero) whose inbox gauges refresh every 0.2 s."""
    state, sim_url = simulator
    tmp: Path = tmp_path_factory.mktemp("metrics-gateway")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp / 'wa_router.db'}", secret_key_file=tmp / "secret.key",
                        admin_token=f"admin-{secrets.token_urlsafe(32)}", graph_url=f"{sim_url}/v25.0",
                        ray_namespace=f"wa-router-metrics-{uuid.uuid4().hex[:8]}", metrics_stats_interval_s=0.2)
    directory = RayDirectory(settings)
    try:
        with BackgroundServer(create_app(settings)) as server:
            yield Gateway(url=server.url, admin_token=str(settings.admin_token), simulator=state,
                          simulator_url=sim_url, database_url=settings.database_url, namespace=settings.ray_namespace)
    finally:
        directory.kill_namespace()


def samples(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = gateway.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_metrics_after_webhook_traffic_and_routing(metered_gateway: Gateway) -> None:
    with scenario(metered_gateway) as sc:
        (agent,) = sc.agents(1)
        inbox = sc.inbox([agent])
        sock = sc.socket(agent)
        customer = customer_id()
        payload = text_from(sc.org, 0, customer, "hello")
        assert sc.org.sender().send_sync(payload).status_code == 200
        redelivered = sc.org.sender().send_sync(payload)  # Meta's redelivery of the same wamid
        assert redelivered.json()["duplicate_messages"] == 1
        url = f"{metered_gateway.url}/webhooks/whatsapp/{sc.org.id}"
        assert WebhookSender(url, "not-the-secret").send_sync(payload).status_code == 403
        assert httpx.post(url, content=encode(payload)).status_code == 401
        tx = sock.next("offer")["transaction_id"]

        found = samples(metered_gateway)
        webhook = "/webhooks/whatsapp/{org_id}"
        assert value(found, "wa_router_http_requests_total", method="POST", route=webhook, status="200") == 2
        assert value(found, "wa_router_http_requests_total", method="POST", route=webhook, status="403") == 1
        assert value(found, "wa_router_http_requests_total", method="POST", route=webhook, status="401") == 1
        # Routes by template: the organization's id never becomes a label of its own.
        assert value(found, "wa_router_http_requests_total", method="POST", route="/v1/orgs/{org_id}/inboxes",
                     status="201") == 1
        assert value(found, "wa_router_webhook_signature_failures_total", reason="mismatch") == 1
        assert value(found, "wa_router_webhook_signature_failures_total", reason="missing") == 1
        assert value(found, "wa_router_webhook_messages_total") == 1
        assert value(found, "wa_router_webhook_duplicate_messages_total") == 1
        assert value(found, "wa_router_webhook_intake_seconds_count") == 2
        assert value(found, "wa_router_webhook_intake_seconds_sum") > 0  # type: ignore[operator]

        org, box = str(sc.org.id), str(inbox)

        def inbox_gauges(**expected: float) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            now = samples(metered_gateway)
            for key, want in expected.items():
                name, _, state = key.partition("__")
                labels = {"organization": org, "inbox": box, **({"state": state} if state else {})}
                if value(now, f"wa_router_inbox_{name}", **labels) != want:
                    return None
            return now

        # Offered, not yet answered: one contact waiting, the agent available (ringing).
        eventually(lambda: inbox_gauges(contacts_in_queue=1, agents__available=1, agents__on_contact=0),
                   what="the inbox gauges with the offered contact")
        sc.do(tx, "accept", agent)
        after = eventually(lambda: inbox_gauges(contacts_in_queue=0, agents__available=0, agents__on_contact=1),
                           what="the inbox gauges after the accept")
        assert value(after, "wa_router_inbox_contacts", organization=org, inbox=box, outcome="answered") == 1
        assert value(after, "wa_router_inbox_offers", organization=org, inbox=box, outcome="made") == 1
        assert value(after, "wa_router_inbox_service_level", organization=org, inbox=box) == 1.0
        # Never a customer in a label.
        text = metered_gateway.http.get("/metrics").text
        assert customer not in text and "customer" not in text
