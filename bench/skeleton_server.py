"""The design's bare skeleton, in its own process and Ray instance: `python -m bench.skeleton_server SPEC.json`.

What every message of this design must cost at least, with none of the product's work: a signed
webhook over HTTP (FastAPI under uvicorn, as the gateway) → forwarded in a batch per inbox to an
inbox actor → in a batch per agent to an agent actor → yielded on the agent's event stream back to the
gateway. The actors are Ray actors with the routing actors' options (`routing_actor_class`), one
process each, as many as the standard workload has, and the gateway reads the streams through the
product's own `Proxy.stream`. Left out, so that the skeleton is a floor and not an estimate: the store
(nothing is durable), routing decisions (an opening message goes round robin, its follow-ups to the
same agent), a conversation's steps (offer, accept, close) and the WebSocket frames to the agents.

`GET /_skeleton/arrivals` says when each wamid reached the gateway on a stream (and how often);
`GET /_skeleton/pids` names the actors' processes, for CPU per process kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import ray
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from actors.directory import Proxy
from actors.event_signal import EventSignal
from actors.ray_connection import RAY_SYSTEM_CONFIG
from actors.ray_directory import routing_actor_class
from bench.workload import WorkloadShape, agent_inboxes
from meta.signature import HEADER, verify

STREAM_IDLE_S = 15.0


class SkeletonAgent:
    """An agent's events in memory: `deliver` appends, `stream_events` yields them (the product's shapes)."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._signal = EventSignal()

    async def deliver(self, messages: list[dict[str, Any]]) -> int:
        for message in messages:
            self._events.append({"id": len(self._events) + 1, "kind": "message", "wamid": message["wamid"]})
        self._signal.notify()
        return len(messages)

    @ray.method(concurrency_group="stream")  # type: ignore[misc]
    async def stream_events(self, after_id: int, idle_s: float = STREAM_IDLE_S) -> AsyncIterator[list[dict[str, Any]]]:
        waiter = self._signal.register()
        try:
            while True:
                waiter[1].clear()
                events = self._events[after_id:]
                if events:
                    after_id = events[-1]["id"]
                    yield events
                    continue
                try:
                    await asyncio.wait_for(waiter[1].wait(), idle_s)
                except TimeoutError:
                    return
        finally:
            self._signal.discard(waiter)

    # Async, as the routing actors' `ping`: a plain method in a group of an async actor once hung here.
    @ray.method(concurrency_group="health")  # type: ignore[misc]
    async def pid(self) -> int:
        return os.getpid()


class SkeletonInbox:
    """Round robin for a customer's first message, the same agent after; one call in flight per agent,
    what queues behind it goes in the next (as the product's `AgentLink`)."""

    def __init__(self, agents: list[Any]) -> None:
        self._agents = agents
        self._next = 0
        self._agent_of: dict[str, int] = {}
        self._waiting: dict[int, list[dict[str, Any]]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}

    async def ingest(self, messages: list[dict[str, Any]]) -> int:
        for message in messages:
            agent = self._agent_of.get(message["customer"])
            if agent is None:
                agent = self._agent_of[message["customer"]] = self._next % len(self._agents)
                self._next += 1
            self._waiting.setdefault(agent, []).append(message)
            if agent not in self._senders:
                self._senders[agent] = asyncio.create_task(self._send(agent))
        return len(messages)

    async def _send(self, agent: int) -> None:
        try:
            while batch := self._waiting.pop(agent, None):
                await self._agents[agent].deliver.remote(batch)
        finally:
            del self._senders[agent]

    @ray.method(concurrency_group="health")  # type: ignore[misc]
    async def pid(self) -> int:
        return os.getpid()


class Skeleton:
    """The gateway's side: signature, parse, a forwarder per inbox, a stream reader per agent."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.inbox_of_number = {number: index for index, number in enumerate(spec["numbers"])}
        self.inboxes: list[Any] = []
        self.agents: list[Any] = []
        self.arrivals: dict[str, list[float]] = {}
        self._waiting: dict[int, list[dict[str, Any]]] = {}
        self._forwarders: dict[int, asyncio.Task[None]] = {}
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        shape = WorkloadShape(inboxes=self.spec["inboxes"], agents=self.spec["agents"],
                              inboxes_per_agent=self.spec["inboxes_per_agent"])
        self.agents = [routing_actor_class(SkeletonAgent).remote() for _ in range(shape.agents)]
        members = [[a for i, a in enumerate(self.agents) if inbox in agent_inboxes(i, shape)]
                   for inbox in range(shape.inboxes)]
        self.inboxes = [routing_actor_class(SkeletonInbox).remote(m) for m in members]
        await asyncio.wait_for(asyncio.gather(*(actor.pid.remote() for actor in self.agents + self.inboxes)), 240)
        self._readers = [asyncio.create_task(self._read(Proxy(agent, f"skeleton-agent-{i}")))
                         for i, agent in enumerate(self.agents)]

    async def stop(self) -> None:
        for task in self._readers + list(self._forwarders.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def receive(self, body: bytes, signature: str) -> None:
        if not verify(body, signature, self.spec["app_secret"]):
            raise HTTPException(401, "X-Hub-Signature-256 does not verify")
        for entry in json.loads(body)["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                inbox = self.inbox_of_number[value["metadata"]["phone_number_id"]]
                for message in value.get("messages", []):
                    self._waiting.setdefault(inbox, []).append({"wamid": message["id"], "customer": message["from"]})
                if inbox in self._waiting and inbox not in self._forwarders:
                    self._forwarders[inbox] = asyncio.create_task(self._forward(inbox))

    async def _forward(self, inbox: int) -> None:
        try:
            while batch := self._waiting.pop(inbox, None):
                await self.inboxes[inbox].ingest.remote(batch)
        finally:
            del self._forwarders[inbox]

    async def _read(self, agent: Proxy) -> None:
        position = 0
        while True:
            async for events in agent.stream("stream_events", position):
                now = time.time()
                for event in events:
                    self.arrivals.setdefault(event["wamid"], []).append(now)
                    position = event["id"]

    async def pids(self) -> dict[str, list[int]]:
        return {"inbox_actor": list(await asyncio.gather(*(a.pid.remote() for a in self.inboxes))),
                "agent_actor": list(await asyncio.gather(*(a.pid.remote() for a in self.agents)))}


def create_app(spec: dict[str, Any]) -> FastAPI:
    skeleton = Skeleton(spec)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=spec["dashboard_port"],
                 log_to_driver=False, configure_logging=False, _system_config=RAY_SYSTEM_CONFIG)
        await skeleton.start()
        try:
            yield
        finally:
            await skeleton.stop()
            ray.shutdown()

    app = FastAPI(lifespan=lifespan)

    @app.post("/webhooks/{org_id}")
    async def webhook(org_id: int, request: Request) -> dict[str, bool]:
        skeleton.receive(await request.body(), request.headers.get(HEADER, ""))
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_skeleton/arrivals")
    async def arrivals() -> dict[str, list[float]]:
        return skeleton.arrivals

    @app.get("/_skeleton/pids")
    async def pids() -> dict[str, list[int]]:
        return await skeleton.pids()

    return app


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(args[0]).read_text())
    uvicorn.run(create_app(spec), host="127.0.0.1", port=spec["port"], log_level="warning", ws="websockets-sansio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
