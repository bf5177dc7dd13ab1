"""What a gateway refuses at start (one line each), and what it must not refuse: a second gateway of the
same deployment on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import ray

import gateway.startup_checks as startup_checks
from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer, free_port
from gateway.deployment import DeploymentConflict, same_deployment
from gateway.startup_checks import StartupRefused, claim_sqlite_store, hosts_of, refusals
from tests.support import Gateway, create_postgres_database, drop_postgres_database, postgres_database_url

REPO = Path(__file__).resolve().parents[1]
PG = "postgresql+asyncpg://wa@db/wa_router"


def test_what_cannot_work_on_several_hosts_is_named() -> None:
    assert refusals("sqlite+aiosqlite:////data/wa.db", 1, secret_key_set=False) == []
    assert refusals(PG, 3, secret_key_set=True) == []
    (sqlite,) = refusals("sqlite+aiosqlite:////data/wa.db", 2, secret_key_set=True)
    assert "SQLite" in sqlite and "WA_ROUTER_DATABASE_URL" in sqlite and "\n" not in sqlite
    (key,) = refusals(PG, 2, secret_key_set=False)
    assert "WA_ROUTER_SECRET_KEY" in key and "\n" not in key
    assert len(refusals("sqlite+aiosqlite:////data/wa.db", 2, secret_key_set=False)) == 2


def test_hosts_are_counted_by_node_address_among_alive_nodes(ray_instance: None) -> None:
    nodes: list[dict[str, object]] = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.1"},
        {"Alive": True, "NodeManagerAddress": "10.0.0.2"}, {"Alive": False, "NodeManagerAddress": "10.0.0.3"}]
    assert hosts_of(nodes) == 2
    # This test session's Ray instance: one host.
    assert startup_checks.alive_hosts() == 1


def test_a_second_gateway_on_a_sqlite_store_is_refused_and_the_claim_dies_with_its_holder(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'wa.db'}"
    first = claim_sqlite_store(url)
    assert first is not None
    with pytest.raises(StartupRefused, match="already served by another gateway") as refused:
        claim_sqlite_store(url)
    assert f"pid {os.getpid()}" in str(refused.value) and "PostgreSQL" in str(refused.value)
    first.release()  # as the kernel does when the holder dies
    again = claim_sqlite_store(url)
    assert again is not None
    again.release()
    assert claim_sqlite_store(f"{PG}") is None


def test_wa_router_serve_refuses_a_sqlite_store_another_gateway_serves_in_one_line(
        gateway: Gateway, tmp_path: Path) -> None:
    env = {**os.environ, "WA_ROUTER_DATABASE_URL": gateway.database_url, "WA_ROUTER_PORT": "0",
           "WA_ROUTER_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "WA_ROUTER_RAY_NAMESPACE": gateway.namespace}
    # Joining the same Ray cluster and namespace: the same deployment, so only the SQLite claim can refuse it.
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--ray-address", address], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already served by another gateway" in lines[0], done.stderr


def test_a_cluster_of_several_hosts_refuses_sqlite_before_touching_the_store(
        ray_instance: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup_checks, "alive_hosts", lambda: 2)
    database = tmp_path / "wa.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{database}", secret_key_file=tmp_path / "secret.key",
                        ray_namespace=f"wa-router-refusal-{uuid.uuid4().hex[:8]}")
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pytest.fail("the gateway started")

    with pytest.raises(StartupRefused) as refused:
        asyncio.run(start())
    lines = str(refused.value).splitlines()
    assert len(lines) == 2 and "SQLite" in lines[0] and "WA_ROUTER_SECRET_KEY" in lines[1]
    import sqlite3

    with sqlite3.connect(database) as connection:  # migrated, but no deployment took the store
        assert connection.execute("SELECT count(*) FROM deployments").fetchone() == (0,)
    # The refused gateway let its SQLite claim go.
    claim = claim_sqlite_store(settings.database_url)
    assert claim is not None
    claim.release()


def test_a_lease_of_the_same_cluster_written_before_namespaces_counts_as_the_same_deployment() -> None:
    assert same_deployment("session_1/wa-router", "session_1/wa-router")
    assert same_deployment("session_1", "session_1/wa-router")
    assert not same_deployment("session_1/other", "session_1/wa-router")
    assert not same_deployment("session_2", "session_1/wa-router")
    assert not same_deployment("session_1", None)


def test_two_gateways_of_one_deployment_share_a_postgresql_store_and_another_namespace_is_refused(
        ray_instance: None, tmp_path: Path) -> None:
    name = asyncio.run(create_postgres_database())
    if name is None:
        pytest.skip("PostgreSQL not reachable")
    namespace = f"wa-router-two-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=postgres_database_url(name), secret_key_file=tmp_path / "secret.key",
                        admin_token=f"admin-{secrets.token_urlsafe(32)}", ray_namespace=namespace,
                        graph_url="http://127.0.0.1:9/v25.0")
    try:
        with BackgroundServer(create_app(settings)) as one, BackgroundServer(create_app(settings)) as two:
            for server in (one, two):
                ready = httpx.get(f"{server.url}/readyz", timeout=10)
                assert ready.status_code == 200 and ready.json()["checks"]["lease"]["ok"], ready.text
            other = create_app(settings.model_copy(update={"ray_namespace": f"{namespace}-other"}))

            async def start_other() -> None:
                async with other.router.lifespan_context(other):
                    pytest.fail("a second deployment started on a live store")

            with pytest.raises(DeploymentConflict, match="in use by a live deployment"):
                asyncio.run(start_other())
    finally:
        RayDirectory(settings).kill_namespace()
        asyncio.run(drop_postgres_database(name))


def test_a_gateway_joined_as_a_ray_client_belongs_to_the_same_deployment(ray_instance: None) -> None:
    """Kubernetes gateways join with `ray://` (no node of their own): their deployment must be the cluster's
    session as for a driver, not the head's address (which a restarted head pod changes)."""
    from gateway.deployment import cluster_identity

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ray.util.client.server", "--address",
                               ray.get_runtime_context().gcs_address, "--host", "127.0.0.1", "--port", str(port),
                               "--mode", "legacy"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = (f"import ray\nray.init('ray://127.0.0.1:{port}', namespace='probe', log_to_driver=False)\n"
             "from gateway.deployment import cluster_identity\nprint(cluster_identity('wa-router'))\n")
    try:
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)  # the client server is still starting
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == cluster_identity("wa-router")
        assert cluster_identity("wa-router").startswith("session_")
    finally:
        server.terminate()
        server.wait(timeout=30)
