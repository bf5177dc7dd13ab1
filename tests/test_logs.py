"""Structured logs: JSON lines with the request's organization / inbox / transaction, and no secret in any log."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from fastapi import FastAPI
from fastapi.testclient import TestClient

from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.background_server import free_port
from gateway.logs import JsonFormatter, LogContext, RedactSecrets, configure_logging, redact

REPO = Path(__file__).resolve().parents[1]

# Long enough to be accepted as an admin token (32 random bytes), and easy to find in a log.
ADMIN_SECRET = "admin-SECRET-value-" + "s" * 40


def test_secrets_are_masked() -> None:
    line = redact('Authorization: Bearer abc.DEF-123 access_token=EAAGxyz app_secret: "s3cr3t" '
                  "url postgresql+asyncpg://wa:hunter2@db:5432/wa X-Hub-Signature-256: sha256=" + "ab" * 32)
    for secret in ("abc.DEF-123", "EAAGxyz", "s3cr3t", "hunter2", "ab" * 32):
        assert secret not in line, line
    assert "Bearer ***" in line and "postgresql+asyncpg://wa:***@db:5432/wa" in line
    assert redact("inbox 12 routed 3 messages") == "inbox 12 routed 3 messages"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_context_and_no_secret(captured: io.StringIO) -> None:
    log = logging.getLogger("wa_router.test")
    log.info("delivered %s with token=%s", "a message", "EAAGsecret", extra={"organization": 3, "wamid": "wamid.X"})
    try:
        raise ValueError("password=hunter2")
    except ValueError:
        log.exception("failed")
    first, second = lines(captured)
    assert first["message"] == "delivered a message with token=***"
    assert (first["organization"], first["wamid"], first["level"], first["logger"]) == \
        (3, "wamid.X", "info", "wa_router.test")
    assert "inbox" not in first and "time" in first
    assert "hunter2" not in json.dumps(second) and "ValueError" in str(second["exception"])


def test_a_request_s_path_gives_organization_inbox_and_transaction(captured: io.StringIO) -> None:
    app = FastAPI()
    app.add_middleware(LogContext)

    @app.post("/v1/orgs/{org_id}/inboxes/{inbox_id}/transactions/{tx_id}")
    async def act(org_id: int, inbox_id: int, tx_id: int) -> dict[str, str]:
        logging.getLogger("wa_router.route").warning("acting")
        return {"ok": "yes"}

    with TestClient(app) as client:
        assert client.post("/v1/orgs/4/inboxes/5/transactions/6").status_code == 200
    logging.getLogger("wa_router.route").warning("outside any request")
    inside, outside = [line for line in lines(captured) if line["logger"] == "wa_router.route"]
    assert (inside["organization"], inside["inbox"], inside["transaction"]) == ("4", "5", "6")
    assert "organization" not in outside


def test_the_text_format_masks_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonFormatter())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s", ("postgresql://u:pw@h/db",), None)
    handler.handle(record)
    assert "pw@" not in stream.getvalue() and "u:***@h/db" in stream.getvalue()


def test_wa_router_serve_logs_json_lines(ray_instance: None, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "WA_ROUTER_LOG_FORMAT": "json", "WA_ROUTER_PORT": str(port),
           "WA_ROUTER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'wa.db'}",
           "WA_ROUTER_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "WA_ROUTER_ADMIN_TOKEN": ADMIN_SECRET,
           "WA_ROUTER_RAY_NAMESPACE": f"wa-router-logs-{port}"}
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--ray-address",
                                ray.get_runtime_context().gcs_address], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        httpx.get(f"http://127.0.0.1:{port}/v1/orgs/1", headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        RayDirectory(Settings(ray_namespace=env["WA_ROUTER_RAY_NAMESPACE"])).kill_namespace()
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("Application startup complete" in str(line["message"]) for line in logged), stderr[-2000:]
    # uvicorn's access line, as JSON, for the request made
    assert any("/v1/orgs/1" in str(line["message"]) for line in logged), stderr[-2000:]
    assert ADMIN_SECRET not in stderr
