"""`/healthz` and `/readyz`: readiness names the part that fails, over real HTTP with a real store and Ray."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path

import httpx
import pytest

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer
from tests.routing_support import Scenario
from tests.support import Gateway, create_postgres_database, drop_postgres_database, eventually, postgres_database_url


def test_a_serving_gateway_is_alive_and_ready(any_gateway: Gateway) -> None:
    assert any_gateway.http.get("/healthz").json() == {"status": "ok"}
    ready = any_gateway.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert set(body["checks"]) == {"store", "ray", "lease", "actors"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_pings_live_routing_actors(sc: Scenario) -> None:
    agent = sc.agent()
    sc.inbox([agent])
    sock = sc.socket(agent)
    sc.send("15550001111")
    sock.next("offer")  # the inbox and the agent actor are alive now
    body = sc.gateway.http.get("/readyz").json()
    assert body["status"] == "ready", body
    assert "answered" in body["checks"]["actors"]["detail"], body


def test_readyz_names_the_store_when_its_database_is_gone(ray_instance: None, tmp_path: Path) -> None:
    name = asyncio.run(create_postgres_database())
    if name is None:
        pytest.skip("PostgreSQL not reachable")
    settings = Settings(database_url=postgres_database_url(name), secret_key_file=tmp_path / "secret.key",
                        admin_token=f"admin-{secrets.token_urlsafe(32)}",
                        ray_namespace=f"wa-router-health-{uuid.uuid4().hex[:8]}",
                        graph_url="http://127.0.0.1:9/v25.0", readiness_timeout_s=1.0)
    directory = RayDirectory(settings)
    try:
        with BackgroundServer(create_app(settings)) as server:
            http = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
            assert http.get("/readyz").status_code == 200
            # The server loses the database under the running gateway (its connections are ended too).
            asyncio.run(drop_postgres_database(name))
            unready = eventually(lambda: (r := http.get("/readyz")).status_code == 503 and r, timeout=10,
                                 what="/readyz answering 503")
            body = unready.json()
            assert "store" in body["failing"], body
            assert body["checks"]["store"]["ok"] is False and body["checks"]["store"]["detail"]
            assert body["checks"]["ray"]["ok"] is True
            # Alive all the same: a restart would not bring the database back.
            assert http.get("/healthz").status_code == 200
    finally:
        directory.kill_namespace()
        asyncio.run(drop_postgres_database(name))
