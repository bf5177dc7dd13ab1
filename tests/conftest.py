"""Shared fixtures: one Ray instance, the Meta simulator and gateways (SQLite and PostgreSQL) per session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from hypothesis import settings as hypothesis_settings

from actors.ray_connection import RAY_SYSTEM_CONFIG
from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer, free_port
from meta.simulator.app import create_simulator_app
from meta.simulator.state import SimulatorState
from tests.cluster_checks import run_cluster_checks
from tests.examples import DEFAULT_EXAMPLES, examples
from tests.routing_support import Scenario, scenario
from tests.support import (
    POSTGRES_ADMIN_URL,
    Gateway,
    create_postgres_database,
    drop_postgres_database,
    postgres_database_url,
)

# Shared, noisy machines: no per-example deadline. In CI the examples are derived from the test
# itself (derandomized) so a submission's result does not depend on luck; locally they vary. `make test`
# gives each property a fifth of its examples, `make fuzz` all of them (tests/examples.py).
hypothesis_settings.register_profile("dev", deadline=None, max_examples=examples(DEFAULT_EXAMPLES))
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True, max_examples=examples(DEFAULT_EXAMPLES))
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Directories of the gateways started this session: their actors are stopped after every test.
_started: list[RayDirectory] = []


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    # One Ray instance for the whole session: ray.init() costs seconds on these machines.
    # address="local": a fresh instance of our own, never a cluster someone left running here.
    # Actors' metrics reach the node's export every second (Ray's default: 10 s), so metrics tests wait ~1 s.
    ray.init(address="local", namespace="wa-router-tests", include_dashboard=False, num_cpus=2, log_to_driver=False,
             configure_logging=False,
             _system_config={**RAY_SYSTEM_CONFIG, "metrics_report_interval_ms": 1000})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def simulator() -> Iterator[tuple[SimulatorState, str]]:
    # Meta's pair limit (about 6 s) shortened so tests sending several replies to one customer stay fast;
    # the gateways pace a little slower than this (send_pair_interval_s below).
    state = SimulatorState(pair_interval_s=0.2)
    with BackgroundServer(create_simulator_app(state)) as server:
        yield state, server.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = asyncio.run(create_postgres_database())
    if name is None:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    yield postgres_database_url(name)
    asyncio.run(drop_postgres_database(name))


@pytest.fixture(scope="session")
def cluster_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The multi-node checks, run once on one three-node cluster of this machine (`tests/cluster_checks.py`)."""
    return run_cluster_checks(tmp_path_factory.mktemp("cluster"))


def _start_gateway(tmp: Path, database_url: str, simulator: tuple[SimulatorState, str],
                   graph_url: str | None = None, **overrides: Any) -> Iterator[Gateway]:
    state, sim_url = simulator
    admin_token = f"admin-{secrets.token_urlsafe(32)}"
    namespace = f"wa-router-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url, secret_key_file=tmp / "secret.key", admin_token=admin_token,
        graph_url=graph_url or f"{sim_url}/v25.0", ray_namespace=namespace, public_url="https://router.example.test",
        # Outbound sending at test speed: short pair interval, quick retries, a timeout tests can provoke.
        send_pair_interval_s=0.25, send_retry_base_s=0.05, send_retry_max_s=0.5, send_timeout_s=2.0,
        # Every test calls from 127.0.0.1, many with bad tokens on purpose: the failure limit is tested on
        # a gateway of its own (tests/test_auth_throttle.py).
        auth_failures_per_minute=0,
        **overrides,
    )
    server = BackgroundServer(create_app(settings))
    directory = RayDirectory(settings)
    _started.append(directory)
    with server:
        yield Gateway(url=f"http://127.0.0.1:{server.port}", admin_token=admin_token, simulator=state,
                      simulator_url=sim_url, database_url=settings.database_url, namespace=namespace)
    directory.kill_namespace()
    _started.remove(directory)


@pytest.fixture(autouse=True)
def _stop_actors_after_test() -> Iterator[None]:
    # Each actor is a process (~47 MiB). Tests use fresh organizations, so the actors of a finished
    # test are never needed again: stopping them keeps the session's memory flat.
    yield
    for directory in _started:
        directory.kill_namespace()


@pytest.fixture(scope="session")
def gateway(ray_instance: None, simulator: tuple[SimulatorState, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway on the embedded SQLite store."""
    tmp = tmp_path_factory.mktemp("sqlite-gateway")
    yield from _start_gateway(tmp, f"sqlite+aiosqlite:///{tmp / 'wa_router.db'}", simulator)


def _start_pg_gateway(tmp: Path, simulator: tuple[SimulatorState, str], **overrides: Any) -> Iterator[Gateway]:
    """A gateway on the real PostgreSQL server, in a database of its own, dropped once the gateway stops (the test
    is skipped when the server cannot be reached)."""
    name = asyncio.run(create_postgres_database())
    if name is None:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    try:
        yield from _start_gateway(tmp, postgres_database_url(name), simulator, **overrides)
    finally:
        asyncio.run(drop_postgres_database(name))


@pytest.fixture(scope="session")
def pg_gateway(ray_instance: None, simulator: tuple[SimulatorState, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway on the real PostgreSQL server, in a database of its own: a deployment owns its store (its sweep
    activates every inbox there), so tests that run actors in this process on `postgres_url` never meet it."""
    yield from _start_pg_gateway(tmp_path_factory.mktemp("pg-gateway"), simulator)


@pytest.fixture
def start_pg_gateway(ray_instance: None, simulator: tuple[SimulatorState, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """`start_pg_gateway(**settings)`: a gateway of the test's own, with those settings, on the real PostgreSQL
    server in a database of its own; stopped (and the database dropped) after the test."""
    with contextlib.ExitStack() as stack:
        def start(**overrides: Any) -> Gateway:
            running = _start_pg_gateway(tmp_path_factory.mktemp("own-pg-gateway"), simulator, **overrides)
            gateway = next(running)
            stack.callback(lambda: next(running, None))
            return gateway

        yield start


@pytest.fixture(scope="session")
def gateway_without_meta(ray_instance: None, simulator: tuple[SimulatorState, str],
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose Graph API URL points at a closed port (Meta unreachable)."""
    tmp = tmp_path_factory.mktemp("no-meta-gateway")
    yield from _start_gateway(tmp, f"sqlite+aiosqlite:///{tmp / 'wa_router.db'}", simulator,
                              graph_url=f"http://127.0.0.1:{free_port()}/v25.0")


@pytest.fixture(params=["sqlite", "postgres"])
def any_gateway(request: pytest.FixtureRequest) -> Gateway:
    """Runs a test once per store backend."""
    return request.getfixturevalue("gateway" if request.param == "sqlite" else "pg_gateway")


@pytest.fixture
def sc(gateway: Gateway) -> Iterator[Scenario]:
    """A routing scenario (fresh organization, agents, inboxes) on the SQLite gateway."""
    with scenario(gateway) as built:
        yield built


@pytest.fixture
def any_sc(any_gateway: Gateway) -> Iterator[Scenario]:
    """A routing scenario on each store backend (SQLite, PostgreSQL)."""
    with scenario(any_gateway) as built:
        yield built
