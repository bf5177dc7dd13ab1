"""Simulated agents in their own process: `python -m bench.agents PLAN.json ACCEPT_DELAY_S LINGER_S`.

Each agent holds a real WebSocket on its event stream (`/v1/orgs/{org}/agents/{id}/events`), accepts an
offer after `ACCEPT_DELAY_S` and closes the chat once it has seen the conversation's last message
(from the offer's first message or a `message` event). A follow-up that reached the transaction
before it was assigned is not pushed to the stream, so an agent also closes after `LINGER_S`
without news. The silent agent keeps its stream open and never answers (its offers time out).

Every event is recorded with its arrival time. The orchestrator drives the process over stdin:
`dump PATH` writes (and forgets) the events recorded so far and answers `dumped`; `quit` stops.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.workload import AgentSpec, Plan, parse_wamid


class SimulatedAgents:
    def __init__(self, plan: Plan, accept_delay_s: float, linger_s: float) -> None:
        self.plan = plan
        self.accept_delay_s = accept_delay_s
        self.linger_s = linger_s
        self.records: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.http = httpx.AsyncClient(base_url=plan.gateway_url, timeout=60,
                                      limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))
        # Per transaction: the message indexes seen and the close timer.
        self._seen: dict[int, set[int]] = {}
        self._expected: dict[int, int] = {}
        self._closers: dict[int, asyncio.TimerHandle] = {}
        self._closing: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, agent: AgentSpec, tx_id: int, action: str) -> None:
        try:
            response = await self.http.post(f"/v1/orgs/{self.plan.org_id}/transactions/{tx_id}/{action}",
                                            headers={"Authorization": f"Bearer {agent.token}"})
            # 409 on accept: the offer expired or was withdrawn meanwhile, the router moved on.
            if response.status_code != 200 and not (action == "accept" and response.status_code == 409):
                self.errors.append(f"{action} {tx_id} by {agent.id}: {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{action} {tx_id} by {agent.id}: {exc!r}")

    async def _accept_later(self, agent: AgentSpec, tx_id: int) -> None:
        await asyncio.sleep(self.accept_delay_s)
        await self._post(agent, tx_id, "accept")

    def _saw(self, agent: AgentSpec, tx_id: int, wamid: str | None) -> None:
        parsed = parse_wamid(wamid) if wamid else None
        if parsed is not None:
            _step, _conv, index, of = parsed
            self._seen.setdefault(tx_id, set()).add(index)
            self._expected[tx_id] = of

    def _maybe_close(self, agent: AgentSpec, tx_id: int) -> None:
        """Close once the last message was seen; otherwise (re)start the linger timer."""
        if tx_id in self._closing:
            return
        expected = self._expected.get(tx_id)
        if expected is not None and expected in self._seen.get(tx_id, set()):
            self._close(agent, tx_id)
            return
        previous = self._closers.pop(tx_id, None)
        if previous is not None:
            previous.cancel()
        self._closers[tx_id] = asyncio.get_running_loop().call_later(self.linger_s, self._close, agent, tx_id)

    def _close(self, agent: AgentSpec, tx_id: int) -> None:
        if tx_id in self._closing:
            return
        self._closing.add(tx_id)
        timer = self._closers.pop(tx_id, None)
        if timer is not None:
            timer.cancel()
        self._spawn(self._post(agent, tx_id, "close"))

    def _on_event(self, agent: AgentSpec, event: dict[str, Any], at: float) -> None:
        kind = event.get("type")
        tx_id = event.get("transaction_id")
        message = event.get("message") if kind == "message" else event.get("first_message")
        wamid = message.get("wamid") if isinstance(message, dict) else None
        self.records.append({"agent": agent.id, "at": at, "type": kind, "tx": tx_id, "wamid": wamid,
                             "reason": event.get("reason"), "expires_at": event.get("expires_at")})
        if agent.silent or not isinstance(tx_id, int):
            return
        if kind == "offer":
            self._saw(agent, tx_id, wamid)
            self._spawn(self._accept_later(agent, tx_id))
        elif kind == "assigned" or kind == "message":
            self._saw(agent, tx_id, wamid)
            self._maybe_close(agent, tx_id)
        elif kind == "transaction_closed":
            self._closing.discard(tx_id)
            self._seen.pop(tx_id, None)
            self._expected.pop(tx_id, None)

    async def _listen(self, agent: AgentSpec, ready: asyncio.Event, counter: list[int]) -> None:
        url = self.plan.gateway_url.replace("http", "ws", 1) + f"/v1/orgs/{self.plan.org_id}/agents/{agent.id}/events"
        cursor: int | None = None
        while True:
            try:
                query = f"?cursor={cursor}" if cursor is not None else ""
                ws: ClientConnection
                async with connect(url + query, additional_headers={"Authorization": f"Bearer {agent.token}"},
                                   open_timeout=120, max_size=None) as ws:
                    hello = json.loads(await ws.recv())
                    if cursor is None:
                        cursor = int(hello["cursor"])
                        counter[0] += 1
                        if counter[0] == len(self.plan.agents):
                            ready.set()
                    async for frame in ws:
                        event = json.loads(frame)
                        cursor = int(event.get("id", cursor))
                        self._on_event(agent, event, time.time())
            except asyncio.CancelledError:
                raise
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                # Reconnect from the cursor: nothing is missed (the stream replays from the store).
                self.errors.append(f"agent {agent.id} stream: {exc!r}; reconnecting")
                await asyncio.sleep(0.5)

    async def run(self) -> None:
        ready = asyncio.Event()
        counter = [0]
        for agent in self.plan.agents:
            self._spawn(self._listen(agent, ready, counter))
        await ready.wait()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            if line.startswith("dump "):
                records, self.records = self.records, []
                errors, self.errors = self.errors, []
                await loop.run_in_executor(None, _write_json, line[5:], {"events": records, "errors": errors})
                print("dumped", flush=True)
        for task in list(self._tasks):
            task.cancel()
        await self.http.aclose()


def _write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    plan = Plan.from_json(json.loads(Path(args[0]).read_text()))
    asyncio.run(SimulatedAgents(plan, float(args[1]), float(args[2])).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
