"""Liveness and readiness: what a load balancer or Kubernetes asks before sending a gateway traffic.

`/healthz` answers while the process serves HTTP. `/readyz` checks what a request needs: the store
answers, Ray's GCS (the head node's control plane) answers, this deployment holds the store's lease, and
the routing actors answer a ping; each check has the same deadline, and a 503 names every part that failed.

Ray's calls to the GCS block and cannot be cancelled: when the head is down one waits until Ray gives up
(`RAY_gcs_rpc_server_reconnect_timeout_s`, 60 s). So the Ray side of the check runs as one probe on a daemon
thread of its own, one probe at a time per gateway (`RayProbe`): requests that come while it runs share its
answer, each waits for it no later than the probe's start plus the deadline, and none starts another. A
hung GCS holds one thread, however often the load balancer asks. A finished probe's answer is never reused:
a head lost since shows at the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ray
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deployment import DeploymentLease
from gateway.logs import redact
from gateway.runtime import Runtime

router = APIRouter(tags=["health"])

# Actors pinged per readiness check: a sample, so the check costs the same with 10 or 10,000 actors.
PINGED_ACTORS = 3


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP."""
    return {"status": "ok"}


async def _store(runtime: Runtime) -> None:
    async with runtime.db.session() as session:
        await session.execute(text("SELECT 1"))


def _ray_connected() -> None:
    if not ray.is_initialized():
        raise RuntimeError("not connected")


def _gcs_answers(timeout_s: float) -> None:
    """A round trip to the GCS, Ray's control plane on the head node.

    `ray.is_initialized()` stays true when the head is gone: only asking the GCS tells. Without it no
    actor can be created, restarted or looked up by name, so the gateway is not ready.
    """
    _ray_connected()
    gcs_client: Any = getattr(ray._private.worker.global_worker, "gcs_client")  # noqa: B009 (untyped in Ray)
    try:
        # A key nobody writes: the answer (none) proves the GCS serves (check_alive([]) asks nothing).
        gcs_client.internal_kv_get(b"wa-router:readyz", namespace=None, timeout=timeout_s)
    except Exception as exc:
        raise RuntimeError(f"the GCS (Ray's head node) does not answer: {type(exc).__name__}") from exc


def _named_actors(namespace: str) -> list[str]:
    # A round trip to the GCS: it also proves the cluster's control plane answers.
    return [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == namespace]


@dataclass(frozen=True)
class RayView:
    """What one probe of Ray saw: the GCS's round trip, then a sample of live routing actors (name, handle)."""

    gcs_ms: float
    sample: list[tuple[str, Any]]
    actors_error: str | None = None  # the GCS answered, but listing the actors failed


def probe_ray(namespace: str, timeout_s: float) -> RayView:
    """The blocking part of readiness (GCS calls), run on the probe's thread: raises when the GCS fails."""
    started = time.monotonic()
    _gcs_answers(timeout_s)
    gcs_ms = (time.monotonic() - started) * 1000
    try:
        names = _named_actors(namespace)
        routing = [n for n in names if n.split(":", 1)[0] in ("inbox", "agent", "agent-store")]
        sample: list[tuple[str, Any]] = []
        for name in random.sample(routing, min(PINGED_ACTORS, len(routing))):
            try:
                sample.append((name, ray.get_actor(name, namespace=namespace)))
            except ValueError:  # gone since it was listed
                continue
    except Exception as exc:
        return RayView(gcs_ms, [], redact(f"{type(exc).__name__}: {exc}")[:300])
    return RayView(gcs_ms, sample)


class RayProbe:
    """One probe of Ray in flight at a time, on a daemon thread of its own; every request shares its answer.

    A request that finds no probe running starts one; those that come while it runs wait for it. Each waits
    no later than the probe's start plus the deadline: a probe still running then (a hung GCS) keeps its
    thread, the request answers without it, and the next request finds it still in flight instead of starting
    another. So at most one thread waits on the GCS, and no request waits past its deadline.
    """

    THREAD_NAME = "wa-router-readyz-ray"

    def __init__(self, probe: Callable[[float], RayView]) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[RayView] | None = None
        self._started = 0.0

    def _start(self, deadline_s: float) -> concurrent.futures.Future[RayView]:
        future: concurrent.futures.Future[RayView] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # running: a waiter that gives up cannot cancel it for the others

        def run() -> None:
            try:
                future.set_result(self._probe(deadline_s))
            except BaseException as exc:  # handed to the requests that wait for it
                future.set_exception(exc)

        threading.Thread(target=run, name=self.THREAD_NAME, daemon=True).start()
        return future

    async def view(self, deadline_s: float) -> RayView:
        with self._lock:
            if self._future is None or self._future.done():
                self._future, self._started = self._start(deadline_s), time.monotonic()
            future, started = self._future, self._started
        remaining = started + deadline_s - time.monotonic()
        if remaining > 0:
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), remaining)
            except TimeoutError:
                pass
        raise TimeoutError(f"Ray's GCS has not answered for {time.monotonic() - started:.1f} s")


def ray_probe(app_state: Any, namespace: str) -> RayProbe:
    """The app's probe (one per gateway), made on its first readiness check."""
    probe: RayProbe | None = getattr(app_state, "ray_probe", None)
    if probe is None:
        probe = RayProbe(lambda timeout_s: probe_ray(namespace, timeout_s))
        app_state.ray_probe = probe
    return probe


async def _actors(view: Awaitable[RayView]) -> str:
    """Ping a few live routing actors (never activating one); ready when none exists or one answers.

    One actor restarting (a node lost, an actor killed) must not take every gateway out of service, so a
    sample is pinged and any answer will do; none answering means Ray cannot reach its actors.
    """
    try:
        seen = await view
    except Exception as exc:
        raise RuntimeError(f"not listed: {exc}") from exc
    if seen.actors_error is not None:
        raise RuntimeError(seen.actors_error)
    if not seen.sample:
        return "no routing actor active"

    async def ping(handle: Any) -> Any:
        return await handle.ping.remote()

    results = await asyncio.gather(*(ping(h) for _, h in seen.sample), return_exceptions=True)
    answered = [n for (n, _), r in zip(seen.sample, results, strict=True) if not isinstance(r, BaseException)]
    if not answered:
        raise RuntimeError(f"no answer from {', '.join(n for n, _ in seen.sample)}")
    return f"{len(answered)} of {len(seen.sample)} answered"


async def _check(check: Callable[[], Awaitable[Any]], deadline_s: float) -> tuple[bool, str]:
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(check(), deadline_s)
    except TimeoutError:
        return False, f"no answer within {deadline_s:g} s"
    except Exception as exc:
        return False, redact(f"{type(exc).__name__}: {exc}")[:300]  # the body is public: no credential in it
    took = f"{(time.monotonic() - started) * 1000:.0f} ms"
    return True, f"{detail} ({took})" if isinstance(detail, str) else took


@router.get("/readyz", responses={503: {"description": "a part is not ready; `failing` names it"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when the store answers, Ray is connected, this deployment holds the store's lease and a
    sample of the routing actors answers a ping; else 503 with `failing` naming each part and `checks` why."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    lease: DeploymentLease | None = getattr(request.app.state, "lease", None)
    if runtime is None or lease is None:
        return JSONResponse(status_code=503, content={"status": "starting", "failing": ["startup"], "checks": {}})
    deadline = runtime.settings.readiness_timeout_s
    # One answer of the shared probe for both Ray checks of this request, awaited through shields so that a
    # check giving up does not cancel it for the other; cancelled below (its thread is the probe's own).
    view = asyncio.ensure_future(ray_probe(request.app.state, runtime.settings.ray_namespace).view(deadline))

    async def ray_check() -> str:
        return f"GCS round trip {(await asyncio.shield(view)).gcs_ms:.0f} ms"

    async def lease_check() -> None:
        if not lease.is_held():
            raise RuntimeError("the deployment lease on the store is not held by this gateway")

    names = ("store", "ray", "lease", "actors")
    checks = [lambda: _store(runtime), ray_check, lease_check, lambda: _actors(asyncio.shield(view))]
    try:
        results = await asyncio.gather(*(_check(c, deadline) for c in checks))
    finally:
        view.cancel()
    report = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in zip(names, results, strict=True)}
    failing = [name for name, (ok, _) in zip(names, results, strict=True) if not ok]
    if failing:
        return JSONResponse(status_code=503, content={"status": "unavailable", "failing": failing, "checks": report})
    return JSONResponse(status_code=200, content={"status": "ready", "failing": [], "checks": report})
