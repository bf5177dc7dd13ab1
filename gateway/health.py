"""Liveness and readiness: what a load balancer or Kubernetes asks before sending a gateway traffic.

`/healthz` answers while the process serves HTTP. `/readyz` checks what a request needs: the store
answers, Ray's GCS (the head node's control plane) answers, this deployment holds the store's lease, and
the routing actors answer a ping; each check has the same deadline, and a 503 names every part that failed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
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


async def _actors(runtime: Runtime) -> str:
    """Ping a few live routing actors (never activating one); ready when none exists or one answers.

    One actor restarting (a node lost, an actor killed) must not take every gateway out of service, so a
    sample is pinged and any answer will do; none answering means Ray cannot reach its actors.
    """
    namespace = runtime.settings.ray_namespace
    names = await asyncio.to_thread(_named_actors, namespace)
    routing = [n for n in names if n.split(":", 1)[0] in ("inbox", "agent", "agent-store")]
    if not routing:
        return "no routing actor active"
    sample = random.sample(routing, min(PINGED_ACTORS, len(routing)))

    async def ping(name: str) -> Any:
        return await ray.get_actor(name, namespace=namespace).ping.remote()

    results = await asyncio.gather(*(ping(n) for n in sample), return_exceptions=True)
    answered = [n for n, r in zip(sample, results, strict=True) if not isinstance(r, BaseException)]
    if not answered:
        raise RuntimeError(f"no answer from {', '.join(sample)}")
    return f"{len(answered)} of {len(sample)} answered"


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

    async def ray_check() -> None:
        await asyncio.to_thread(_gcs_answers, deadline)

    async def lease_check() -> None:
        if not lease.is_held():
            raise RuntimeError("the deployment lease on the store is not held by this gateway")

    names = ("store", "ray", "lease", "actors")
    checks = [lambda: _store(runtime), ray_check, lease_check, lambda: _actors(runtime)]
    results = await asyncio.gather(*(_check(c, deadline) for c in checks))
    report = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in zip(names, results, strict=True)}
    failing = [name for name, (ok, _) in zip(names, results, strict=True) if not ok]
    if failing:
        return JSONResponse(status_code=503, content={"status": "unavailable", "failing": failing, "checks": report})
    return JSONResponse(status_code=200, content={"status": "ready", "failing": [], "checks": report})
