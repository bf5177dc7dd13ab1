"""`/readyz` while Ray's GCS hangs: however many probes come, at most one thread waits on it, and no request
waits past the readiness deadline (`gateway/health.py`, `RayProbe`).

Ray's GCS calls block and cannot be cancelled; a probe that handed each to a thread of its own left one
thread behind per request while the head was down. Here the GCS round trip is made to hang (as with a head
that swallows packets) and the readiness route is asked many times, one after another and at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import health
from gateway.health import RayProbe, RayView

DEADLINE_S = 0.3


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == RayProbe.THREAD_NAME]


@pytest.fixture
def hung_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The GCS round trip blocks until the event is set (then answers); counts its calls."""
    release = threading.Event()
    calls: list[float] = []

    def gcs_answers(timeout_s: float) -> None:
        calls.append(timeout_s)
        release.wait(60)

    monkeypatch.setattr(health, "_gcs_answers", gcs_answers)
    monkeypatch.setattr(health, "_named_actors", lambda namespace: [])
    release.calls = calls  # type: ignore[attr-defined]
    yield release
    release.set()
    deadline = time.monotonic() + 10
    while probe_threads() and time.monotonic() < deadline:
        time.sleep(0.01)


class _Session:
    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, statement: Any) -> None:
        return None


def readiness_app() -> FastAPI:
    """The health routes on a gateway whose store answers and which holds its lease (no Ray needed: the GCS
    round trip is the patched one)."""
    app = FastAPI()
    app.include_router(health.router)
    app.state.runtime = SimpleNamespace(
        settings=SimpleNamespace(readiness_timeout_s=DEADLINE_S, ray_namespace="readyz-probe"),
        db=SimpleNamespace(session=_Session))
    app.state.lease = SimpleNamespace(is_held=lambda: True)
    return app


def test_readyz_probes_while_the_gcs_hangs_leave_at_most_one_thread(hung_gcs: threading.Event) -> None:
    app = readiness_app()
    before = {t.ident for t in threading.enumerate()}

    async def probes() -> list[tuple[httpx.Response, float]]:
        answers: list[tuple[httpx.Response, float]] = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:

            async def one() -> tuple[httpx.Response, float]:
                started = time.monotonic()
                response = await client.get("/readyz")
                return response, time.monotonic() - started

            for _ in range(10):  # a load balancer's probes, one after another
                answers.append(await one())
            answers += await asyncio.gather(*(one() for _ in range(20)))  # and many at once
        # Counted inside the loop: asyncio.run's end would wait for its executor's threads (and hide them).
        left.extend(t for t in threading.enumerate() if t.ident not in before)
        return answers

    left: list[threading.Thread] = []
    answers = asyncio.run(probes())
    for response, took in answers:
        assert response.status_code == 503, response.text
        body = response.json()
        assert {"ray", "actors"} <= set(body["failing"]) and body["checks"]["store"]["ok"], body
        assert took < DEADLINE_S + 1.0, took  # none waits past the deadline for the hung probe
    assert len(left) <= 1 and all(t.name == RayProbe.THREAD_NAME for t in left), left
    assert len(hung_gcs.calls) == 1  # type: ignore[attr-defined]  # one GCS call for 30 probes

    # The GCS answers again: the hung probe ends, and the next request starts a new one and is ready.
    hung_gcs.set()
    deadline = time.monotonic() + 10
    while probe_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not probe_threads()

    async def after() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.get("/readyz")

    ready = asyncio.run(after())
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["actors"]["detail"].startswith("no routing actor active")
    assert len(hung_gcs.calls) == 2  # type: ignore[attr-defined]
    assert not probe_threads()


def test_requests_share_the_probe_in_flight_and_give_up_at_its_deadline() -> None:
    release = threading.Event()
    runs: list[float] = []

    def probe(timeout_s: float) -> RayView:
        runs.append(timeout_s)
        release.wait(10)
        return RayView(gcs_ms=1.0, sample=[])

    shared = RayProbe(probe)

    async def ask(count: int) -> list[Any]:
        return await asyncio.gather(*(shared.view(DEADLINE_S) for _ in range(count)), return_exceptions=True)

    first = asyncio.run(ask(5))
    assert all(isinstance(r, TimeoutError) for r in first), first
    # Still in flight past its deadline: a new request does not start another, it answers at once (waiting for a
    # deadline of its own would take DEADLINE_S; anything shorter leaves a loaded machine its scheduling delays).
    started = time.monotonic()
    (late,) = asyncio.run(ask(1))
    assert isinstance(late, TimeoutError) and time.monotonic() - started < DEADLINE_S, late
    assert len(runs) == 1 and len(probe_threads()) == 1
    release.set()
    deadline = time.monotonic() + 10
    while probe_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    answers = asyncio.run(ask(3))
    assert all(isinstance(a, RayView) for a in answers), answers
    assert 2 <= len(runs) <= 4  # a finished probe's answer is not reused: a quick one may be asked again
    assert not probe_threads()
