"""The real stack in subprocesses: the Meta simulator and the gateway (`wa-router serve`, which starts
its own local Ray instance and actors, or joins a cluster), on a fresh SQLite file or a fresh PostgreSQL
database."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from gateway.background_server import free_port


def wait_http(url: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not answer {url} within {timeout_s}s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 60.0) -> None:
    """SIGTERM (the gateway shuts its Ray instance down gracefully), then SIGKILL if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def _postgres(admin_url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


class Stack:
    """`with Stack(database_url) as stack:` simulator and gateway running; everything removed after.

    A PostgreSQL `database_url` names the server: a fresh database is created on it and dropped after.
    """

    def __init__(self, database_url: str | None = None, log_dir: Path | None = None,
                 ray_address: str | None = None, dashboard_port: int | None = None, task_events: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="wa-router-bench-"))
        self.log_dir = log_dir or self.workdir
        self.admin_token = "bench-admin-" + secrets.token_urlsafe(32)
        self._pg_server: str | None = None
        self._pg_name: str | None = None
        if database_url and database_url.startswith("postgresql"):
            base = database_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            self._pg_server = database_url
            self._pg_name = f"wa_router_bench_{secrets.token_hex(5)}"
            self.database_url = f"{base}/{self._pg_name}"
        else:
            self.database_url = database_url or f"sqlite+aiosqlite:///{self.workdir / 'wa_router.db'}"
        self.simulator_port = free_port()
        self.gateway_port = free_port()
        # A cluster run's gateway joins `ray_address` (whose dashboard is `dashboard_port`); by default the
        # gateway starts a local Ray instance of its own.
        self.ray_address = ray_address or ""
        self.dashboard_port = dashboard_port or free_port()
        self.task_events = task_events
        self.simulator: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def ray_namespace(self) -> str:
        return "wa-router-bench"

    def _log(self, name: str) -> IO[bytes]:
        handle = (self.log_dir / name).open("wb")
        self._logs.append(handle)
        return handle

    def start(self) -> Stack:
        if self._pg_server is not None:
            asyncio.run(_postgres(self._pg_server, f'CREATE DATABASE "{self._pg_name}"'))
        self.simulator = subprocess.Popen(
            [sys.executable, "-m", "meta.simulator", "--port", str(self.simulator_port), "--mps", "1000000"],
            cwd=self.workdir, stdout=self._log("simulator.log"), stderr=subprocess.STDOUT)
        wait_http(f"{self.simulator_url}/_sim/sent_messages", self.simulator, "the Meta simulator")
        env = {**os.environ,
               "WA_ROUTER_DATABASE_URL": self.database_url,
               "WA_ROUTER_SECRET_KEY_FILE": str(self.workdir / "secret.key"),
               "WA_ROUTER_ADMIN_TOKEN": self.admin_token,
               "WA_ROUTER_GRAPH_URL": f"{self.simulator_url}/v25.0",
               "WA_ROUTER_RAY_NAMESPACE": self.ray_namespace,
               "WA_ROUTER_RAY_ADDRESS": self.ray_address,
               "WA_ROUTER_RAY_DASHBOARD_PORT": str(self.dashboard_port),
               "WA_ROUTER_RAY_TASK_EVENTS": "true" if self.task_events else "false"}
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.gateway_port), "--log-level", "warning"],
            cwd=self.workdir, env=env, stdout=self._log("gateway.log"), stderr=subprocess.STDOUT)
        wait_http(f"{self.gateway_url}/healthz", self.gateway, "the gateway")
        return self

    def stop(self) -> None:
        stop_process(self.gateway)
        stop_process(self.simulator, timeout_s=10)
        for handle in self._logs:
            handle.close()
        if self._pg_server is not None:
            try:
                asyncio.run(_postgres(self._pg_server, f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)'))
            except Exception as exc:  # the figures are already written; say what was left behind
                print(f"could not drop {self._pg_name}: {exc}", file=sys.stderr)
        if self.log_dir != self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
