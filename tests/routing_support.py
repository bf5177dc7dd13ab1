"""End-to-end helpers for the routing suites: an org scenario builder and a live agent event socket.

Everything goes through the gateway's public HTTP and WebSocket API and the simulator's signed
webhooks; the only direct Ray use is listing (and, after a test, stopping) the org's named actors.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import ray
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.ws_auth import EVENTS_SUBPROTOCOL
from tests.support import Gateway, Org, auth, eventually, org_with_waba, text_from

EVENT_TIMEOUT = 15.0

Event = dict[str, Any]


@dataclass(frozen=True)
class Agent:
    id: int
    token: str


def customer_id() -> str:
    """A fresh customer wa_id (digits, unique across the session)."""
    return f"1555{uuid.uuid4().int % 10**9:09d}"


class AgentSocket:
    """The agent's workspace event stream, read in a background thread.

    `next(type)` hands out events in stream order: each event is returned once, and an event of
    another type met on the way is left for a later call. `on_event` (optional) runs in the reader
    thread for every event, e.g. to auto-accept offers.
    """

    def __init__(self, gateway: Gateway, org: Org, user_id: int, token: str, *, cursor: int | None = None,
                 subprotocol_token: bool = False, on_event: Callable[[Event], None] | None = None) -> None:
        url = gateway.url.replace("http", "ws", 1) + org.path(f"/agents/{user_id}/events")
        params = []
        if cursor is not None:
            params.append(f"cursor={cursor}")
        if params:
            url += "?" + "&".join(params)
        # A browser's way (subprotocols `wa-router.events` and `bearer.<token>`) or the Authorization header.
        headers = None if subprotocol_token else auth(token)
        subprotocols = [EVENTS_SUBPROTOCOL, f"bearer.{token}"] if subprotocol_token else None
        self.user_id = user_id
        self._ws: ClientConnection = connect(url, additional_headers=headers, subprotocols=subprotocols,  # type: ignore[arg-type]
                                             open_timeout=EVENT_TIMEOUT)
        self.subprotocol = self._ws.subprotocol
        self.hello: Event = json.loads(self._ws.recv(timeout=EVENT_TIMEOUT))
        assert self.hello["type"] == "hello", self.hello
        self.events: list[Event] = []
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self._on_event = on_event
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name=f"agent-socket-{user_id}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    frame = self._ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                event = json.loads(frame)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
                if self._on_event is not None:
                    self._on_event(event)
        except ConnectionClosed:
            pass
        except BaseException as exc:  # surfaced by the test through `error`
            self.error = exc
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def next(self, type: str, timeout: float = EVENT_TIMEOUT, where: Callable[[Event], bool] | None = None) -> Event:
        """The first not yet returned event of `type` (matching `where`), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, event in enumerate(self.events):
                    if index not in self._taken and event.get("type") == type and (where is None or where(event)):
                        self._taken.add(index)
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    kinds = [e.get("type") for e in self.events]
                    raise AssertionError(f"agent {self.user_id}: no {type!r} event within {timeout}s "
                                         f"(closed={self._closed}, error={self.error!r}); got {kinds}")
                self._cond.wait(remaining)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the server ends the stream (e.g. the gateway died); True once it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, timeout)

    def of_type(self, type: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.get("type") == type]

    def last_id(self) -> int:
        with self._cond:
            return int(self.events[-1]["id"]) if self.events else int(self.hello["cursor"])

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame (None while open)."""
        return self._ws.close_code

    def close(self) -> None:
        self._ws.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> AgentSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AutoAgent:
    """An agent that accepts every offer and closes each chat after `hold_s`.

    Works from its own thread with its own HTTP client, and checks from its event stream that it
    never holds more than `max_concurrent` chats at once.
    """

    def __init__(self, sc: Scenario, agent: Agent, max_concurrent: int, hold_s: float = 0.15) -> None:
        self.agent = agent
        self.max_concurrent = max_concurrent
        self.hold_s = hold_s
        self.active: set[int] = set()
        self.max_seen = 0
        self.accepted: list[int] = []
        self.closed: list[int] = []
        self.refused_accepts = 0
        self.errors: list[str] = []
        self._jobs: queue.Queue[Event | None] = queue.Queue()
        self._http = httpx.Client(base_url=sc.gateway.url, timeout=30, headers=auth(agent.token))
        self._path = sc.org.path
        self._worker = threading.Thread(target=self._work, name=f"auto-agent-{agent.id}", daemon=True)
        self._worker.start()
        self.socket = sc.socket(agent, on_event=self._jobs.put)

    def _post(self, tx_id: int, action: str) -> int:
        return self._http.post(self._path(f"/transactions/{tx_id}/{action}")).status_code

    def _work(self) -> None:
        while (event := self._jobs.get()) is not None:
            kind, tx_id = event.get("type"), event.get("transaction_id")
            try:
                if kind == "offer":
                    code = self._post(tx_id, "accept")
                    if code == 200:
                        self.accepted.append(tx_id)
                    elif code == 409:  # expired or withdrawn meanwhile: the router moved on
                        self.refused_accepts += 1
                    else:
                        self.errors.append(f"accept {tx_id}: {code}")
                elif kind == "assigned":
                    self.active.add(tx_id)
                    self.max_seen = max(self.max_seen, len(self.active))
                    if len(self.active) > self.max_concurrent:
                        self.errors.append(f"over capacity: {sorted(self.active)}")
                    threading.Timer(self.hold_s, self._jobs.put, ({"type": "_close", "transaction_id": tx_id},)).start()
                elif kind == "_close":
                    code = self._post(tx_id, "close")
                    if code != 200:
                        self.errors.append(f"close {tx_id}: {code}")
                elif kind == "transaction_closed":
                    self.active.discard(tx_id)
                    self.closed.append(tx_id)
            except Exception as exc:  # reported by the test through `errors`
                self.errors.append(f"{kind} {tx_id}: {exc!r}")

    def stop(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=10)
        self._http.close()


@dataclass
class Scenario:
    """One fresh organization with a linked WABA (two numbers) and helpers to drive routing."""

    gateway: Gateway
    org: Org
    sockets: list[AgentSocket] = field(default_factory=list)

    # ------------------------------------------------------------------ setup

    @property
    def owner(self) -> str:
        return self.org.owner_token

    def agent(self, *, available: bool = True, max_concurrent: int | None = None,
              licenses: list[str] | None = None) -> Agent:
        user_id, token = self.org.add_user("member", licenses)
        agent = Agent(user_id, token)
        if max_concurrent is not None:
            self.gateway.ok("PATCH", self.org.path(f"/agents/{user_id}"), self.owner,
                            json={"max_concurrent": max_concurrent})
        if available:
            self.status(agent, "available")
        return agent

    def agents(self, count: int, **kwargs: Any) -> list[Agent]:
        made = [self.agent(**kwargs) for _ in range(count)]
        return sorted(made, key=lambda a: a.id)

    def inbox(self, agents: list[Agent], *, mode: str = "round_robin", reassign_after_s: int = 30,
              dials_per_agent: int = 1, number: int = 0, proficiency: dict[int, int] | None = None) -> int:
        proficiency = proficiency or {}
        body = {"name": f"Inbox {number}", "phone_number_id": self.org.numbers[number], "assignment_mode": mode,
                "reassign_after_s": reassign_after_s, "dials_per_agent": dials_per_agent,
                "agents": [{"user_id": a.id, "proficiency": proficiency.get(a.id, 1)} for a in agents]}
        return int(self.gateway.ok("POST", self.org.path("/inboxes"), self.owner, 201, json=body)["id"])

    def edit_inbox(self, inbox_id: int, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.gateway.ok("PATCH", self.org.path(f"/inboxes/{inbox_id}"), self.owner,
                                                 json=changes)
        return result

    def socket(self, agent: Agent, **kwargs: Any) -> AgentSocket:
        sock = AgentSocket(self.gateway, self.org, agent.id, agent.token, **kwargs)
        self.sockets.append(sock)
        return sock

    def busy_agent_and_waiting_customer(self) -> tuple[Agent, int, AgentSocket, int, int]:
        """One agent at capacity (1) with an accepted chat, and a second customer waiting in the queue.

        Returns (agent, inbox id, the agent's socket, the accepted transaction, the waiting one).
        """
        (agent,) = self.agents(1)
        inbox = self.inbox([agent])
        sock = self.socket(agent)
        first, second = customer_id(), customer_id()
        self.send(first)
        accepted = sock.next("offer")["transaction_id"]
        self.do(accepted, "accept", agent)
        self.send(second)
        waiting = self.tx_of(second)["id"]
        assert [q["id"] for q in self.queue(inbox)] == [waiting]
        return agent, inbox, sock, accepted, waiting

    # ------------------------------------------------------------------ actions

    def status(self, agent: Agent, status: str, token: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.gateway.ok("PUT", self.org.path(f"/agents/{agent.id}/status"),
                                                 token or agent.token, json={"status": status})
        return result

    def send(self, customer: str | None, text: str = "hello", number: int = 0, **identity: Any) -> None:
        """A customer's text; `identity` may add `user_id` (BSUID), `username` and `name`."""
        response = self.org.sender().send_sync(text_from(self.org, number, customer, text, **identity))
        assert response.status_code == 200, response.text

    def act(self, tx_id: int, action: str, agent: Agent) -> httpx.Response:
        return self.gateway.call("POST", self.org.path(f"/transactions/{tx_id}/{action}"), agent.token)

    def do(self, tx_id: int, action: str, agent: Agent, expected: int = 200) -> dict[str, Any]:
        result: dict[str, Any] = self.gateway.ok("POST", self.org.path(f"/transactions/{tx_id}/{action}"),
                                                 agent.token, expected)
        return result

    # ------------------------------------------------------------------ reads

    def tx(self, tx_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.gateway.ok("GET", self.org.path(f"/transactions/{tx_id}"), self.owner)
        return result

    def trail(self, tx_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.gateway.items(self.org.path(f"/transactions/{tx_id}/events"),
                                                          self.owner)
        return result

    def kinds(self, tx_id: int) -> list[tuple[str, int | None]]:
        return [(e["kind"], e["agent_id"]) for e in self.trail(tx_id)]

    def transactions(self, **query: Any) -> list[dict[str, Any]]:
        # The API lists newest first; the scenarios read them in the order the customers wrote.
        result: list[dict[str, Any]] = self.gateway.items(self.org.path("/transactions"), self.owner, **query)
        return sorted(result, key=lambda t: int(t["id"]))

    def queue(self, inbox_id: int, token: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.gateway.items(self.org.path(f"/inboxes/{inbox_id}/queue"),
                                                          token or self.owner)
        return result

    def agent_view(self, agent: Agent) -> dict[str, Any]:
        result: dict[str, Any] = self.gateway.ok("GET", self.org.path(f"/agents/{agent.id}"), self.owner)
        return result

    def tx_ids_of(self, customer: str) -> set[int]:
        return {t["id"] for t in self.transactions() if t["customer"]["wa_id"] == customer}

    def tx_of(self, customer: str, inbox_id: int | None = None, state: str | None = None,
              exclude: set[int] | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """The customer's newest transaction (other than `exclude`), once it exists."""
        def find() -> dict[str, Any] | None:
            query: dict[str, Any] = {}
            if inbox_id is not None:
                query["inbox_id"] = inbox_id
            if state is not None:
                query["state"] = state
            rows = [t for t in self.transactions(**query)
                    if t["customer"]["wa_id"] == customer and t["id"] not in (exclude or set())]
            return rows[-1] if rows else None

        found: dict[str, Any] = eventually(find, timeout=timeout, what=f"a transaction of {customer}")
        return found

    def wait_state(self, tx_id: int, state: str, offered_to: int | None = None,
                   timeout: float = 15.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            tx = self.tx(tx_id)
            if tx["state"] == state and (offered_to is None or tx["offered_to"] == offered_to):
                return tx
            return None

        found: dict[str, Any] = eventually(check, timeout=timeout,
                                           what=f"transaction {tx_id} {state} (offered to {offered_to})")
        return found

    def wait_trail(self, tx_id: int, kind: str, count: int = 1) -> list[tuple[str, int | None]]:
        def check() -> list[tuple[str, int | None]] | None:
            kinds = self.kinds(tx_id)
            return kinds if sum(1 for k, _ in kinds if k == kind) >= count else None

        found: list[tuple[str, int | None]] = eventually(check, what=f"{count} {kind!r} event(s) on tx {tx_id}")
        return found

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        stop_org_actors(self.gateway, self.org.id)


def org_actor_names(gateway: Gateway, org_id: int) -> set[str]:
    """Names of the org's routing actors registered in the gateway's namespace."""
    return {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == gateway.namespace
            and entry["name"].startswith((f"inbox:{org_id}:", f"agent:{org_id}:"))}


def stop_org_actors(gateway: Gateway, org_id: int) -> None:
    """Stop a finished test's actors: each is a process, and orgs are never reused."""
    for name in org_actor_names(gateway, org_id):
        with suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=gateway.namespace), no_restart=True)


@contextmanager
def scenario(gateway: Gateway) -> Iterator[Scenario]:
    built = Scenario(gateway, org_with_waba(gateway))
    try:
        yield built
    finally:
        built.close()
