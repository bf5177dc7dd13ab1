"""The head node lost: what the gateways do when Ray's GCS (the cluster's control plane) is gone.

A one-node cluster (`bench.cluster`, its own process) and a gateway joined to it (`wa-router serve` as its
own process). Every process of the head is SIGKILLed (GCS, raylet, dashboard, workers). The gateway keeps
answering `/healthz`, turns `/readyz` to 503 naming `ray` (a load balancer stops sending it traffic), and,
once the GCS has not answered for `RAY_gcs_rpc_server_reconnect_timeout_s` (60 s by default, 8 s here), Ray
ends the process: an orchestrator then restarts it against the recovered head.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from gateway.background_server import free_port
from tests.fault_injection import GatewayProcess

RECONNECT_TIMEOUT_S = 8


def test_a_gateway_whose_head_node_died_turns_unready_naming_ray_then_exits(tmp_path: Path) -> None:
    cluster = subprocess.Popen([sys.executable, "-m", "bench.cluster", "0", str(free_port())], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    gateway: GatewayProcess | None = None
    try:
        assert cluster.stdout is not None
        address = json.loads(cluster.stdout.readline())["address"]
        gateway = GatewayProcess(database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", ray_address=address,
                                 namespace="head-loss", graph_url="http://127.0.0.1:9/v25.0", workdir=tmp_path,
                                 admin_token=f"admin-{secrets.token_urlsafe(32)}", port=free_port(),
                                 extra_env={"RAY_gcs_rpc_server_reconnect_timeout_s": str(RECONNECT_TIMEOUT_S)})
        gateway.start()
        assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200

        head = psutil.Process(cluster.pid).children(recursive=True)
        assert any(p.name() == "gcs_server" for p in head)
        killed_at = time.monotonic()
        for process in head:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

        # Unready within one readiness check, naming Ray; alive meanwhile.
        answer = httpx.get(f"{gateway.url}/readyz", timeout=30)
        assert answer.status_code == 503 and "ray" in answer.json()["failing"], answer.text
        assert answer.json()["checks"]["store"]["ok"] is True
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        assert gateway.process is not None
        # Then Ray gives up on the GCS and ends the process (no serving on without a control plane).
        gateway.process.wait(timeout=RECONNECT_TIMEOUT_S + 60)
        exited_after = time.monotonic() - killed_at
        print(f"gateway exited {exited_after:.1f} s after the head's death (code {gateway.process.returncode})")
        assert exited_after >= RECONNECT_TIMEOUT_S - 1
        assert "Failed to connect to GCS" in gateway.log_tail(40)
    finally:
        if gateway is not None:
            gateway.kill()
        with contextlib.suppress(Exception):
            assert cluster.stdin is not None
            cluster.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.wait(timeout=30)
        if cluster.poll() is None:
            cluster.kill()
