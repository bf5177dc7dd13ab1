"""Failed authentications are limited per client address (429 with Retry-After), on a gateway of its own."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.app import create_app
from gateway.auth_throttle import AuthThrottle
from gateway.background_server import BackgroundServer
from meta.simulator.state import SimulatorState

LIMIT = 5


@pytest.fixture(scope="module")
def strict(ray_instance: None, simulator: tuple[SimulatorState, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    tmp: Path = tmp_path_factory.mktemp("throttled-gateway")
    admin_token = f"admin-{secrets.token_urlsafe(32)}"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp / 'wa_router.db'}", secret_key_file=tmp / "secret.key",
                        admin_token=admin_token, graph_url=f"{simulator[1]}/v25.0",
                        ray_namespace=f"wa-router-test-{uuid.uuid4().hex[:8]}", auth_failures_per_minute=LIMIT)
    with BackgroundServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http, admin_token
    RayDirectory(settings).kill_namespace()


def test_an_address_that_keeps_failing_is_refused_even_with_a_valid_token(strict: tuple[httpx.Client, str]) -> None:
    http, admin_token = strict
    good = {"Authorization": f"Bearer {admin_token}"}
    # A missing token is no guess: never counted.
    for _ in range(LIMIT + 2):
        assert http.get("/v1/orgs").status_code == 401
    assert http.get("/v1/orgs", headers=good).status_code == 200
    for _ in range(LIMIT):
        assert http.get("/v1/orgs", headers={"Authorization": "Bearer war_guess"}).status_code == 401
    for headers in ({"Authorization": "Bearer war_guess"}, good):
        refused = http.get("/v1/orgs", headers=headers)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Bodies (authenticated before they are read) and the event stream are refused the same way.
    assert http.post("/v1/orgs", headers=good, json={}).status_code == 429
    url = str(http.base_url).replace("http", "ws", 1).rstrip("/") + "/v1/orgs/1/agents/1/events"
    with pytest.raises(InvalidStatus) as closed:
        connect(url, additional_headers=good, open_timeout=15)
    assert closed.value.response.status_code == 403


def test_throttle_counts_a_minute_of_failures_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("gateway.auth_throttle.time.monotonic", lambda: now[0])
    throttle = AuthThrottle(3)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
    assert throttle.retry_after("a") == 60
    assert throttle.retry_after("b") is None  # another address is not affected
    now[0] += 30
    assert throttle.retry_after("a") == 30
    now[0] += 30.5
    assert throttle.retry_after("a") is None
    off = AuthThrottle(0)
    for _ in range(100):
        off.failed("a")
    assert off.retry_after("a") is None
