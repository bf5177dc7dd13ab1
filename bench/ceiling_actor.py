"""The actor ceiling, in its own process and Ray instance: `python -m bench.ceiling_actor DURATION_S [IDLE_S]`.

Raw Ray async actor calls with the routing actors' options (`num_cpus=0`, high `max_concurrency`, no task
events): throughput with many calls in flight, the latency of one call at a time, and the CPU one call and one
event-stream item cost each side at the pace the product's actors see them (one every `PACE_S`, their
threads asleep in between). Also an EMPTY
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
    async def stream(self, count: int, gap_s: float = 0.0) -> AsyncIterator[list[int]]:
        for n in range(count):
            yield [n]
            if gap_s:
                await asyncio.sleep(gap_s)

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    async def release_heap(self) -> bool:
        """What an idle agent does once quiet (`actors/free_heap.py`)."""
        return release_free_heap()


# The product's pace: at 20-80 msg/s each of ~60 actors is called every few tens of milliseconds, not back to back.
PACE_S = 0.02


def _cpu_s(process: psutil.Process) -> float:
    return float(sum(process.cpu_times()[:2]))


async def _paced_cost(actor: Any, payload: dict[str, Any], window_s: float) -> dict[str, Any]:
    """CPU per call and per stream item, caller (this process) and callee (the actor's), one every PACE_S over
    `window_s` each, each process's idle CPU over as long taken off."""
    here, there = psutil.Process(), psutil.Process(await actor.pid.remote())
    count = max(10, int(window_s / PACE_S))
    before = (_cpu_s(here), _cpu_s(there))
    await asyncio.sleep(window_s)
    idle = ((_cpu_s(here) - before[0]) / window_s, (_cpu_s(there) - before[1]) / window_s)

    def per_item(began: float, start: tuple[float, float]) -> tuple[float, float]:
        took = time.perf_counter() - began

        def cost(process: psutil.Process, cpu: float, idle_rate: float) -> float:
            return round(1000 * (_cpu_s(process) - cpu - idle_rate * took) / count, 3)

        return cost(here, start[0], idle[0]), cost(there, start[1], idle[1])

    start, began = (_cpu_s(here), _cpu_s(there)), time.perf_counter()
    for _ in range(count):
        await actor.call.remote(payload)
        await asyncio.sleep(PACE_S)
    caller, callee = per_item(began, start)
    start, began = (_cpu_s(here), _cpu_s(there)), time.perf_counter()
    items = 0
    async for ref in actor.stream.options(num_returns="streaming").remote(count, PACE_S):
        await ref
        items += 1
    assert items == count
    consumer, producer = per_item(began, start)
    return {"pace_ms": PACE_S * 1000, "calls": count, "call_caller_cpu_ms": caller, "call_callee_cpu_ms": callee,
            "stream_item_consumer_cpu_ms": consumer, "stream_item_producer_cpu_ms": producer}


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
    paced = await _paced_cost(shaped, payload, max(0.5, duration_s / 4))

    # Handles kept until the memory is read: an actor without one is stopped.
    served_actors = {task_events: routing_actor_class(EmptyRoutingActor).options(
        enable_task_events=task_events).remote() for task_events in (False, True)}
    served = {task_events: await _serve(actor, payload) for task_events, actor in served_actors.items()}
    empty_process = psutil.Process(await empty.pid.remote())
    shaped_process = psutil.Process(await shaped.pid.remote())
    await asyncio.sleep(3.0 if idle_s is None else idle_s)  # let it settle
    idle_s = 5.0 if idle_s is None else idle_s
    cpu_before = _cpu_s(empty_process)
    await asyncio.sleep(idle_s)
    idle_cpu = 100 * (_cpu_s(empty_process) - cpu_before) / idle_s
    return {"calls_per_s": round(throughput, 1), "sequential_call_ms": summary_ms(latencies),
            # What one call and one stream item cost in CPU at the product's pace (`PACE_S` apart).
            "paced": paced,
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
