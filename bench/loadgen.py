"""The load generator, in its own process: `python -m bench.loadgen SPEC.json OUT.json`.

Open loop (`mode: "open"`): every request is built and signed before the clock starts, then posted
at its scheduled time whether or not earlier requests were answered (new connections are opened
when every kept-alive one is busy), so a slow server cannot slow the offered load down. The
acknowledgement time is measured from the *scheduled* instant (no coordinated omission); the
generator's own lateness (actual - scheduled send) and CPU are reported so its health is visible.

Closed loop (`mode: "closed"`): `concurrency` connections post back to back for `duration_s`,
which measures a server's saturation throughput (the HTTP ceiling).

The HTTP/1.1 client is a minimal one over asyncio streams: cheap enough per request that the
generator is not the bottleneck on a two-core machine.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import percentile, summary_ms
from bench.workload import ScheduledMessage, build_schedule, signed_request

REQUEST_TIMEOUT_S = 30.0
# uvicorn closes a kept-alive connection after 5 s without a request: one idle longer than this is not
# reused, or a request could be written into a connection the server is closing (answered by nothing).
KEEP_ALIVE_REUSE_S = 4.0


@dataclass
class Outcome:
    scheduled: float
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0
    error: str | None = None


class ConnectionPool:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # (reader, writer, when it was given back), the most recent last
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < KEEP_ALIVE_REUSE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._idle.append((*conn, time.monotonic()))

    def close(self) -> None:
        for _reader, writer, _since in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(pool: ConnectionPool, request: bytes) -> int:
    """Send one request, read one response; the connection is kept alive unless the server closes it."""
    reader, writer = await pool.take()
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        if length:
            await reader.readexactly(length)
    except BaseException:
        writer.close()
        raise
    if keep_alive:
        pool.give_back((reader, writer))
    else:
        writer.close()
    return status


async def _send_one(pool: ConnectionPool, request: bytes, outcome: Outcome) -> None:
    outcome.sent = time.time()
    try:
        outcome.status = await asyncio.wait_for(_exchange(pool, request), REQUEST_TIMEOUT_S)
    except Exception as exc:  # reported per request: a failure is a figure, not a crash
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.answered = time.time()


async def run_open(spec: dict[str, Any]) -> dict[str, Any]:
    schedule: list[ScheduledMessage] = build_schedule(spec["workload"])
    path = spec["path"]
    requests = [signed_request(spec["host"], spec["port"], path, spec["workload"], m) for m in schedule]
    pool = ConnectionPool(spec["host"], spec["port"])
    start = time.time() + 0.5  # after the build: the clock starts with everything signed
    outcomes = [Outcome(scheduled=start + m.offset_s) for m in schedule]
    cpu_before = _cpu_seconds()
    tasks = []
    for request, outcome in zip(requests, outcomes, strict=True):
        delay = outcome.scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_send_one(pool, request, outcome)))
    await asyncio.gather(*tasks)
    wall = time.time() - start
    cpu = _cpu_seconds() - cpu_before
    pool.close()
    lateness = [o.sent - o.scheduled for o in outcomes]
    return {
        "mode": "open", "start": start, "wall_s": wall, "cpu_s": cpu, "cpu_percent": round(100 * cpu / wall, 1),
        "connections_opened": pool.opened,
        "lateness_ms": summary_ms(lateness),
        "messages": [{"wamid": m.wamid, "k": m.index, "conversation": m.conversation, "customer": m.customer,
                      "inbox": m.inbox_index, "scheduled": o.scheduled, "sent": o.sent, "answered": o.answered,
                      "status": o.status, "error": o.error} for m, o in zip(schedule, outcomes, strict=True)],
    }


async def run_closed(spec: dict[str, Any]) -> dict[str, Any]:
    body = spec["body"].encode()
    request = (f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    pool = ConnectionPool(spec["host"], spec["port"])
    latencies: list[float] = []
    errors = 0
    deadline = time.time() + spec["duration_s"]

    async def worker() -> None:
        nonlocal errors
        while time.time() < deadline:
            began = time.time()
            try:
                status = await asyncio.wait_for(_exchange(pool, request), REQUEST_TIMEOUT_S)
                if status != 200:
                    errors += 1
            except Exception:
                errors += 1
            latencies.append(time.time() - began)

    cpu_before = _cpu_seconds()
    began = time.time()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    wall = time.time() - began
    cpu = _cpu_seconds() - cpu_before
    pool.close()
    return {"mode": "closed", "requests": len(latencies), "errors": errors, "wall_s": wall,
            "requests_per_s": round(len(latencies) / wall, 1), "latency_ms": summary_ms(latencies),
            "p50_ms": percentile(latencies, 50), "cpu_percent": round(100 * cpu / wall, 1)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(args[0]).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works, only a little slower
        pass
    result = asyncio.run(run_open(spec) if spec["mode"] == "open" else run_closed(spec))
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
