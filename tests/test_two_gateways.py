"""Two gateways of one deployment on PostgreSQL: they share the store and the Ray namespace; webhooks
alternate between them, one is SIGKILLed midway (its deliveries then go to the other, as a Service would
send Meta's retries), and nothing acknowledged is lost, duplicated or left unrouted. The long form, with agents,
replies and every invariant of the fault-injection engine, is `python -m tests.two_gateways --long` (`make soak`)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path

import httpx
import pytest
import ray

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer, free_port
from meta.simulator.state import SimulatorState
from meta.simulator.webhook_sender import WebhookSender
from tests.fault_injection import GatewayProcess
from tests.routing_support import customer_id, scenario
from tests.support import (
    Gateway,
    create_postgres_database,
    drop_postgres_database,
    eventually,
    postgres_database_url,
    query_db,
    text_from,
)

MESSAGES = 40
KILL_AFTER = 20


def test_two_gateways_share_a_deployment_and_one_dies_without_losing_a_message(
        ray_instance: None, simulator: tuple[SimulatorState, str], tmp_path: Path) -> None:
    name = asyncio.run(create_postgres_database())
    if name is None:
        pytest.skip("PostgreSQL not reachable")
    state, sim_url = simulator
    namespace = f"wa-router-pair-{uuid.uuid4().hex[:8]}"
    admin = f"admin-{secrets.token_urlsafe(32)}"
    # One key for both (WA_ROUTER_SECRET_KEY in production; here the first gateway's key file).
    settings = Settings(database_url=postgres_database_url(name), secret_key_file=tmp_path / "secret.key",
                        admin_token=admin, graph_url=f"{sim_url}/v25.0", ray_namespace=namespace,
                        public_url="https://router.example.test")
    second = GatewayProcess(database_url=settings.database_url, ray_address=ray.get_runtime_context().gcs_address,
                            namespace=namespace, graph_url=f"{sim_url}/v25.0", workdir=tmp_path, admin_token=admin,
                            port=free_port())
    try:
        with BackgroundServer(create_app(settings)) as first:
            second.start()
            one = Gateway(url=first.url, admin_token=admin, simulator=state, simulator_url=sim_url,
                          database_url=settings.database_url, namespace=namespace)
            for url in (first.url, second.url):  # both ready: the second shares the first's lease
                assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, url
            with scenario(one) as sc:
                agent = sc.agent(max_concurrent=50)
                inbox = sc.inbox([agent])
                customers = [customer_id() for _ in range(5)]
                acknowledged: list[str] = []
                senders = {url: WebhookSender(f"{url}/webhooks/whatsapp/{sc.org.id}", sc.org.app_secret)
                           for url in (first.url, second.url)}
                for i in range(MESSAGES):
                    if i == KILL_AFTER:
                        second.kill()
                    payload = text_from(sc.org, 0, customers[i % len(customers)], f"message {i}")
                    wamid = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
                    target = (first.url, second.url)[i % 2]
                    try:
                        answer = senders[target].send_sync(payload)
                    except httpx.HTTPError:  # the killed gateway: the delivery is retried on the live one
                        answer = senders[first.url].send_sync(payload)
                    assert answer.status_code == 200, answer.text
                    acknowledged.append(wamid)

                def routed() -> list[tuple[str, int | None]] | None:
                    rows = query_db(one, "SELECT wamid, transaction_id FROM inbound_messages WHERE org_id = :o",
                                    o=sc.org.id)
                    return rows if len(rows) == MESSAGES and all(tx is not None for _, tx in rows) else None

                rows = eventually(routed, timeout=60, what="every acknowledged message stored and routed")
                assert sorted(w for w, _ in rows) == sorted(acknowledged)  # each once: no loss, no duplicate
                open_txs = query_db(one, "SELECT customer_wa_id, count(*) FROM transactions WHERE inbox_id = :i "
                                    "AND state != 'closed' GROUP BY customer_wa_id", i=inbox)
                assert sorted(c for c, _ in open_txs) == sorted(customers)
                assert all(count == 1 for _, count in open_txs)  # one conversation per customer
                # The surviving gateway serves on, ready.
                assert httpx.get(f"{first.url}/readyz", timeout=10).status_code == 200
    finally:
        second.kill()
        RayDirectory(settings).kill_namespace()
        asyncio.run(drop_postgres_database(name))
