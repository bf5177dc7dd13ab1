"""The actor ceiling, in its own process and Ray instance: `python -m bench.ceiling_actor DURATION_S [IDLE_S]`.

Raw Ray async actor calls with the routing actors' options (`num_cpus=0`, high `max_concurrency`, no task
events): throughput with many calls in flight, and the latency of one call at a time. Also an EMPTY
actor's unique memory (USS) and idle CPU, the baseline an agent actor is compared with, and the USS of
empty actors of an agent's shape, fresh and after serving calls (Ray's task events off and on). Prints JSON.
The idle CPU is read over IDLE_S (5 s by default) after as long again to settle (3 s by default); the test
suite's smoke, which asserts no figure of it, passes a short one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import ray

from actors.free_heap import release_free_heap
from actors.ray_connection import RAY_SYSTEM_CONFIG
from actors.ray_directory import routing_actor_class
from bench.stats import summary_ms


class EchoActor:
    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def pid(self) -> int:
        return os.getpid()


class EmptyActor:
    def pid(self) -> int:
        return os.getpid()


class EmptyRoutingActor:
    """An actor of an agent actor's shape doing nothing: async, the routing actors' options and concurrency
    groups (an event loop and thread each), one event stream read. What Ray costs an agent before our code."""

    async def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="health")
    async def ping(self) -> bool:
        return True

    @ray.method(concurrency_group="stream")
    async def stream(self, count: int) -> AsyncIterator[list[int]]:
        for n in range(count):
            yield [n]

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    async def release_heap(self) -> bool:
        """What an idle agent does once quiet (`actors/free_heap.py`)."""
        return release_free_heap()


# Calls an actor of an agent's shape serves before its memory is read: what Ray itself keeps of a process
# that has worked (an agent always has), apart from anything of ours.
SERVED_CALLS = 5000


async def _serve(actor: Any, payload: dict[str, Any]) -> int:
    """SERVED_CALLS calls, 100 in flight, and a stream read every 500 (as an agent's stream reconnects)."""
    for done in range(0, SERVED_CALLS, 100):
        await asyncio.gather(*(actor.call.remote(payload) for _ in range(100)))
        if done % 500 == 0:
            assert len([batch async for batch in actor.stream.options(num_returns="streaming").remote(3)]) == 3
    await actor.release_heap.remote()
    pid: int = await actor.pid.remote()
    return pid


async def measure(duration_s: float, idle_s: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000, "enable_task_events": False}
    echo: Any = ray.remote(**options)(EchoActor).remote()  # type: ignore[call-overload]
    empty: Any = ray.remote(num_cpus=0)(EmptyActor).remote()
    shaped: Any = routing_actor_class(EmptyRoutingActor).remote()
    await shaped.ping.remote()
    streamed = [batch async for batch in shaped.stream.options(num_returns="streaming").remote(3)]
    assert len(streamed) == 3
    payload = {"transaction_id": 1, "inbox_id": 1, "message": {"id": 1, "wamid": "wamid.x", "summary": "hello"}}
    await echo.call.remote(payload)

    latencies: list[float] = []
    deadline = time.time() + duration_s / 2
    while time.time() < deadline:
        began = time.perf_counter()
        await echo.call.remote(payload)
        latencies.append(time.perf_counter() - began)

    calls = 0
    deadline = time.time() + duration_s / 2
    began = time.perf_counter()
    while time.time() < deadline:
        await asyncio.gather(*(echo.call.remote(payload) for _ in range(200)))
        calls += 200
    throughput = calls / (time.perf_counter() - began)

    # Handles kept until the memory is read: an actor without one is stopped.
    served_actors = {task_events: routing_actor_class(EmptyRoutingActor).options(
        enable_task_events=task_events).remote() for task_events in (False, True)}
    served = {task_events: await _serve(actor, payload) for task_events, actor in served_actors.items()}
    empty_process = psutil.Process(await empty.pid.remote())
    shaped_process = psutil.Process(await shaped.pid.remote())
    await asyncio.sleep(3.0 if idle_s is None else idle_s)  # let it settle
    idle_s = 5.0 if idle_s is None else idle_s
    cpu_before = sum(empty_process.cpu_times()[:2])
    await asyncio.sleep(idle_s)
    idle_cpu = 100 * (sum(empty_process.cpu_times()[:2]) - cpu_before) / idle_s
    return {"calls_per_s": round(throughput, 1), "sequential_call_ms": summary_ms(latencies),
            "empty_actor_uss_mib": round(empty_process.memory_full_info().uss / 2**20, 1),
            "empty_routing_actor_uss_mib": round(shaped_process.memory_full_info().uss / 2**20, 1),
            # The same shape after SERVED_CALLS calls, its freed heap given back; Ray's task events off (the
            # routing actors' default) and on.
            "served_calls": SERVED_CALLS,
            "served_routing_actor_uss_mib": round(psutil.Process(served[False]).memory_full_info().uss / 2**20, 1),
            "served_routing_actor_task_events_uss_mib":
                round(psutil.Process(served[True]).memory_full_info().uss / 2**20, 1),
            "empty_actor_idle_cpu_percent": round(idle_cpu, 3)}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config=RAY_SYSTEM_CONFIG)
    try:
        result = asyncio.run(measure(float(args[0]) if args else 10.0, float(args[1]) if len(args) > 1 else None))
    finally:
        ray.shutdown()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
