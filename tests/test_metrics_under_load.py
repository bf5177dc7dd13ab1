"""While messages flow, both places a Prometheus scrapes show the inbox's figures: the gateway's `/metrics`
(the supervisor statistics from the store: conversations waiting, offers made) and the Ray node's metrics
export (the inbox actor's own: messages routed, offers made, queue depth), the node and its port found
through Ray as a scrape configuration would (the node the inbox actor runs on, its `MetricsExportPort`).

Load: signed webhooks from eight customers, four a second, into an inbox whose one agent lets every offer
ring out (offers made, missed, made again; conversations waiting). Both endpoints are read while it runs,
and each figure must be there before the load stops.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer
from meta.simulator.state import SimulatorState
from tests.routing_support import customer_id, scenario
from tests.support import Gateway, eventually, text_from

LOAD_FOR_S = 28.0  # at most: the load stops as soon as both endpoints showed every figure
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def loaded_gateway(ray_instance: None, simulator: tuple[SimulatorState, str], tmp_path: Path) -> Iterator[Gateway]:
    """A gateway of its own whose inbox figures refresh every 0.2 s."""
    state, sim_url = simulator
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'wa_router.db'}",
                        secret_key_file=tmp_path / "secret.key", admin_token=f"admin-{secrets.token_urlsafe(32)}",
                        graph_url=f"{sim_url}/v25.0", ray_namespace=f"wa-router-load-{uuid.uuid4().hex[:8]}",
                        metrics_stats_interval_s=0.2)
    directory = RayDirectory(settings)
    try:
        with BackgroundServer(create_app(settings)) as server:
            yield Gateway(url=server.url, admin_token=str(settings.admin_token), simulator=state,
                          simulator_url=sim_url, database_url=settings.database_url, namespace=settings.ray_namespace)
    finally:
        directory.kill_namespace()


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels, or the sum over samples carrying them (Ray adds its own)."""
    exact = found.get((name, frozenset(labels.items())))
    if exact is not None:
        return exact
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in found.items() if n == name and wanted <= lbls)


def ray_metrics_url(node_id: str) -> str:
    """The metrics export of the node an actor runs on, as Ray describes its nodes."""
    (node,) = [n for n in ray.nodes() if n["NodeID"] == node_id and n["Alive"]]
    port = int(node["MetricsExportPort"])
    for host in (node["NodeManagerAddress"], "127.0.0.1"):
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://{host}:{port}/metrics", timeout=5)
            return f"http://{host}:{port}/metrics"
    raise AssertionError(f"no metrics export answers on port {port} of node {node_id}")


def test_gateway_and_ray_metrics_show_the_inbox_figures_while_messages_flow(loaded_gateway: Gateway) -> None:
    with scenario(loaded_gateway) as sc:
        agent = sc.agent(max_concurrent=1)  # available, never answers: every offer rings out and is made again
        inbox = sc.inbox([agent], reassign_after_s=1)
        org, box = str(sc.org.id), str(inbox)
        customers = [customer_id() for _ in range(8)]
        sender = sc.org.sender()
        sent: list[int] = []
        stop = threading.Event()

        def load() -> None:
            began = time.monotonic()
            while not stop.is_set() and time.monotonic() - began < LOAD_FOR_S:
                n = len(sent)
                assert sender.send_sync(text_from(sc.org, 0, customers[n % len(customers)], f"m{n}")).status_code == 200
                sent.append(n)
                stop.wait(0.25)

        flow = threading.Thread(target=load, name="webhook-load", daemon=True)
        flow.start()
        try:
            # The inbox actor is up once the first message is routed: where it runs tells which node to scrape.
            handle = eventually(lambda: _actor(f"inbox:{org}:{box}", loaded_gateway.namespace), timeout=20,
                                what="the inbox actor")
            ray_url = ray_metrics_url(ray.get(handle.ping.remote(), timeout=20)["node_id"])
            seen: dict[str, float] = {}

            def figures() -> dict[str, float] | None:
                gateway = scrape(f"{loaded_gateway.url}/metrics")
                node = scrape(ray_url)
                now = {
                    "gateway waiting": value(gateway, "wa_router_inbox_contacts_in_queue", organization=org,
                                             inbox=box),
                    "gateway offers made": value(gateway, "wa_router_inbox_offers", organization=org, inbox=box,
                                                 outcome="made"),
                    "gateway webhook messages": value(gateway, "wa_router_webhook_messages_total"),
                    "ray messages routed": value(node, "ray_wa_router_inbox_messages_routed_total",
                                                 organization=org, inbox=box),
                    "ray offers made": value(node, "ray_wa_router_inbox_offers_total", organization=org, inbox=box,
                                             outcome="made"),
                    "ray waiting": value(node, "ray_wa_router_inbox_queue_depth", organization=org, inbox=box),
                }
                for name, figure in now.items():
                    if figure > 0 and flow.is_alive():  # seen while the load runs
                        seen.setdefault(name, figure)
                return now if len(seen) == len(now) else None

            found = eventually(figures, timeout=LOAD_FOR_S, interval=0.5,
                               what="every inbox figure on both endpoints while messages flow")
            assert flow.is_alive(), "the load ended before both endpoints showed the figures"
            print({"messages sent": len(sent), **found})
        finally:
            stop.set()
            flow.join(timeout=30)
        assert seen["gateway offers made"] >= 1 and seen["ray offers made"] >= 1
        assert seen["ray messages routed"] >= 1 and seen["gateway webhook messages"] >= 1
        assert 1 <= seen["gateway waiting"] <= len(customers) and 1 <= seen["ray waiting"] <= len(customers)


def _actor(name: str, namespace: str) -> object | None:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
