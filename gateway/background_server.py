"""Run an ASGI app under uvicorn on a background thread, on a real loopback socket.

Used by the test-suite, the demo and the benchmark to serve the gateway and the
Meta simulator over real HTTP without a second process.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """`with BackgroundServer(app) as server: httpx.get(server.url + "/...")`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout_s: float = 60.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._startup_timeout_s = startup_timeout_s
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on",
                                ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start in {self._startup_timeout_s}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
