"""Fault-injection proof of the routing core: signed webhooks, agents and SIGKILLs, then invariants.

The gateway runs as its own OS process (`wa-router serve`) joined to a Ray instance owned by the
caller, so its routing actors (detached) survive the gateway's death. While a seeded stream of
signed webhooks (with Meta-style redeliveries and retries-until-200) flows in and agents on
WebSocket streams accept, decline, ignore offers and toggle presence, the engine SIGKILLs inbox
actors, agent actors, the agents' shared store actors (PostgreSQL) and the gateway process.
Afterwards every agent is made available and accepting, the engine waits (bounded) for quiescence
and checks the invariants through the HTTP API, the agents' streams and (read-only) the store.

Everything is a parameter of `FaultPlan`: the short variant (`make test`) and the long one
(`make soak`: `python -m tests.fault_injection --long`) share all the code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import queue
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import ray

from actors.names import agent_store_actor_name, sender_actor_name
from actors.ray_connection import RAY_SYSTEM_CONFIG
from config.settings import Settings
from meta.simulator import payloads
from meta.simulator.state import DeliveryPlan, GivenUpStatus, SentMessage, SimulatorState
from meta.simulator.webhook_sender import encode as encode_webhook
from meta.simulator.webhook_sender import signed_headers
from tests.routing_support import Agent, AgentSocket, Event, Scenario
from tests.support import Gateway, Org, auth, org_with_waba, query_db

MODES = ("round_robin", "proficiency", "sticky", "longest_idle", "manual")
# Statuses that make a delivery worth retrying, as Meta does (anything but a 2xx, or no answer).
RETRY_BACKOFF_S = (0.2, 0.4, 0.8, 1.5)


# ==================================================================== the plan


@dataclass(frozen=True)
class FaultPlan:
    """Sizes, rates and kill counts of one run. Same seed, same structure (messages, kills, choices)."""

    messages: int = 2000
    redelivery_ratio: float = 0.2
    customers_per_inbox: int = 6
    agents: int = 6
    max_concurrent: int = 2
    send_rate_per_s: float = 30.0
    sender_threads: int = 32
    reassign_after_s: int = 1
    sticky_dials: int = 2
    inbox_kills: int = 3
    agent_kills: int = 3
    gateway_kills: int = 3
    # PostgreSQL only: the shared store actors that run the agents' steps (`agent-store:<n>`).
    agent_store_kills: int = 2
    # The outbound senders (`sender:<phone_number_id>`), killed while agents' replies flow through them.
    sender_kills: int = 2
    # A whole Ray worker node (its raylet and every process under it), on a multi-node cluster only
    # (`tests/node_loss.py` passes the function that does it).
    node_kills: int = 0
    gateway_down_s: float = 1.5
    # Right before each gateway kill a spike of deliveries, so some are stored but not yet forwarded.
    burst_before_gateway_kill: int = 40
    kill_after_burst_s: float = 0.3
    # Agent behaviour while faults are injected.
    accept_p: float = 0.6
    decline_p: float = 0.15  # the rest is ignored (the 1-second timer fires)
    hold_s: tuple[float, float] = (0.3, 2.5)
    presence_toggle_every_s: tuple[float, float] = (4.0, 10.0)
    away_for_s: tuple[float, float] = (0.5, 2.0)
    claim_every_s: float = 0.7
    # Replies: each conversation an agent holds gets 0..max_replies of them (POST .../messages) during the hold.
    reply_p: float = 0.8
    max_replies: int = 3
    # Meta's pair limit for the run's numbers, and the senders' pacing to match (the default 6 s would make
    # a customer's replies queue for minutes: this run is about faults, not pacing).
    pair_interval_s: float = 0.1
    # Bounds of the end game.
    ack_deadline_s: float = 120.0
    quiescence_timeout_s: float = 90.0
    quiet_for_s: float = 3.0
    seed: int = 6

    @property
    def deliveries(self) -> int:
        return self.messages + round(self.messages * self.redelivery_ratio)

    def kills_on(self, database: str) -> int:
        store_actors = self.agent_store_kills if database == "postgres" else 0
        return (self.inbox_kills + self.agent_kills + self.gateway_kills + self.sender_kills + self.node_kills
                + store_actors)


# `make test`'s run: one SIGKILL of each kind (an inbox, an agent, a sender, the gateway process and, on
# PostgreSQL, an agent store) over 400 messages. `make soak` runs LONG: every kind many times over 20,000.
SHORT = FaultPlan(messages=400, inbox_kills=1, agent_kills=1, gateway_kills=1, agent_store_kills=1, sender_kills=1)
LONG = replace(FaultPlan(), messages=20000, customers_per_inbox=20, agents=10, max_concurrent=3, send_rate_per_s=40.0,
               inbox_kills=15, agent_kills=15, gateway_kills=10, agent_store_kills=10, sender_kills=8,
               quiescence_timeout_s=180.0)


# ==================================================================== the gateway as an OS process


class GatewayProcess:
    """`wa-router serve` in its own process group, joined to the caller's Ray instance.

    Killed with SIGKILL (no cleanup at all) and restarted on the same port and store.
    """

    def __init__(self, *, database_url: str, ray_address: str, namespace: str, graph_url: str, workdir: Path,
                 admin_token: str, port: int, extra_env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "gateway.log"
        self.env = {
            **os.environ,
            "WA_ROUTER_DATABASE_URL": database_url,
            "WA_ROUTER_RAY_ADDRESS": ray_address,
            "WA_ROUTER_RAY_NAMESPACE": namespace,
            "WA_ROUTER_GRAPH_URL": graph_url,
            "WA_ROUTER_ADMIN_TOKEN": admin_token,
            "WA_ROUTER_SECRET_KEY_FILE": str(workdir / "secret.key"),
            "WA_ROUTER_PUBLIC_URL": "https://router.example.test",
            "WA_ROUTER_HOST": "127.0.0.1",
            "WA_ROUTER_PORT": str(port),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

    def start(self, timeout_s: float = 90.0) -> None:
        executable = Path(sys.executable).with_name("wa-router")
        command = [str(executable)] if executable.exists() else [sys.executable, "-m", "gateway.cli"]
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {self.starts + 1} at {time.strftime('%H:%M:%S')} ====\n".encode())
            self.process = subprocess.Popen([*command, "serve", "--log-level", "warning"], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = began + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode} at start; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    self.start_seconds.append(time.monotonic() - began)
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s}s; see {self.log_path}:\n"
                           f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish a request, commit or forward anything."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ==================================================================== HTTP with retries across gateway deaths


def _whole_trail(http: httpx.Client, path: str, token: str) -> list[dict[str, Any]]:
    """Every page of a transaction's audit trail (empty if the gateway does not answer)."""
    trail: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        response = call_through_outages(http, "GET", path, headers=auth(token), params=params)
        if response is None or response.status_code != 200:
            return trail
        page = response.json()
        trail += page["items"]
        if page["next_cursor"] is None:
            return trail
        params = {"limit": 200, "cursor": page["next_cursor"]}


def call_through_outages(client: httpx.Client, method: str, path: str, *, give_up_after_s: float = 60.0,
                         **kwargs: Any) -> httpx.Response | None:
    """A request retried while the gateway is down or restarting (no answer, 502/503).

    Gives up after `give_up_after_s` with the last 502/503 answer, or None if nothing ever answered.
    """
    deadline = time.monotonic() + give_up_after_s
    attempt = 0
    last: httpx.Response | None = None
    while True:
        try:
            response = client.request(method, path, **kwargs)
            if response.status_code not in (502, 503):
                return response
            last = response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return last
        time.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        attempt += 1


def _detail(response: httpx.Response) -> str:
    """The error's `detail` (which of the 503s it was: a restarting actor, a reloading inbox, the store)."""
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:80]


# ==================================================================== webhooks, the way Meta sends them


@dataclass(frozen=True)
class Delivery:
    wamid: str
    inbox_index: int
    customer: str
    body: bytes
    redelivery: bool


@dataclass
class SenderFigures:
    posted: int = 0
    attempts: int = 0
    retried: int = 0  # deliveries that needed more than one attempt (gateway down, 5xx, timeouts)
    acknowledged: set[str] = field(default_factory=set)
    unacknowledged: dict[str, str] = field(default_factory=dict)  # wamid -> last outcome
    first_sent_s: dict[str, float] = field(default_factory=dict)  # wamid -> seconds into the storm
    ack_latency_s: list[float] = field(default_factory=list)  # of each 200 (the attempt that got it)
    acked_at_s: dict[str, float] = field(default_factory=dict)  # wamid -> first 200, seconds into the storm
    failed_attempts: Counter[str] = field(default_factory=Counter)  # outcome of attempts that got no 200
    acked_by: Counter[str] = field(default_factory=Counter)  # gateway URL -> 200s it answered
    finished_s: float = 0.0  # when the last delivery ended, seconds into the storm
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan_deliveries(plan: FaultPlan, org_waba: str, numbers: list[str], app_secret: str, run_id: str,
                    rng: random.Random) -> tuple[list[Delivery], dict[int, list[str]]]:
    """The seeded webhook stream: each message once, plus ~`redelivery_ratio` redeliveries a little later."""
    customers = {i: [f"1555{rng.randrange(10**9):09d}" for _ in range(plan.customers_per_inbox)]
                 for i in range(len(numbers))}
    firsts: list[Delivery] = []
    for n in range(plan.messages):
        index = rng.randrange(len(numbers))
        customer = rng.choice(customers[index])
        wamid = f"wamid.fault.{run_id}.{n:06d}"
        phone_id = numbers[index]
        payload = payloads.inbound_message(org_waba, phone_id, f"+1 555 {phone_id[-7:]}", customer,
                                           f"Customer {customer[-4:]}", type="text", body=f"message {n}",
                                           message_id=wamid)
        body = encode_webhook(payload)
        firsts.append(Delivery(wamid, index, customer, body, redelivery=False))
    stream: list[Delivery | None] = list(firsts)
    redelivered = rng.sample(range(plan.messages), round(plan.messages * plan.redelivery_ratio))
    # A redelivery comes after its original, 1..150 places later (Meta retries minutes later; we compress).
    inserts = sorted(((min(i + rng.randint(1, 150), plan.messages), firsts[i]) for i in redelivered),
                     key=lambda item: item[0], reverse=True)
    for position, original in inserts:
        stream.insert(position, replace(original, redelivery=True))
    return [d for d in stream if d is not None], customers


class WebhookStream:
    """Posts the planned deliveries at a fixed rate, each retried (with backoff) until a 200."""

    def __init__(self, plan: FaultPlan, url: str, app_secret: str, deliveries: list[Delivery],
                 other_urls: list[str] | None = None) -> None:
        self.plan = plan
        self.url = url
        # Several gateways behind one Service: deliveries alternate between them, and an attempt that got no
        # 200 is retried on the next one (Meta's retry reaches a live pod).
        self.urls = [url, *(other_urls or [])]
        self._sequence = itertools.count()
        self.app_secret = app_secret
        self.deliveries = deliveries
        self.figures = SenderFigures()
        self.done = threading.Event()
        self.began = time.monotonic()
        self._cursor = 0
        self._cursor_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread = threading.Thread(target=self._run, name="webhook-stream", daemon=True)
        self._local = threading.local()

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def latency_note(self) -> str:
        """Ack latency and the achieved rate: the figures to read when a run is slower than planned."""
        latencies = sorted(self.figures.ack_latency_s) or [0.0]

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

        rate = self.figures.posted / self.figures.finished_s if self.figures.finished_s else 0.0
        failed = ", ".join(f"{k} x{n}" for k, n in self.figures.failed_attempts.most_common())
        return (f"attempts without a 200: {failed or 'none'}; webhook acks: p50 {pct(0.5) * 1000:.0f} ms, "
                f"p95 {pct(0.95) * 1000:.0f} ms, max "
                f"{latencies[-1] * 1000:.0f} ms; planned {self.plan.send_rate_per_s:.0f}/s, achieved {rate:.1f}/s "
                f"over {self.figures.finished_s:.0f}s")

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=15)
            self._local.client = client
        return client

    def _deliver(self, delivery: Delivery) -> None:
        self.figures.first_sent_s.setdefault(delivery.wamid, time.monotonic() - self.began)
        headers = signed_headers(delivery.body, self.app_secret)
        deadline = time.monotonic() + self.plan.ack_deadline_s
        first = next(self._sequence)
        attempt = 0
        outcome = ""
        while time.monotonic() < deadline:
            attempt += 1
            url = self.urls[(first + attempt - 1) % len(self.urls)]
            try:
                sent = time.monotonic()
                response = self._client().post(url, content=delivery.body, headers=headers)
                if response.status_code == 200:
                    with self.figures.lock:
                        self.figures.acked_by[url] += 1
                        self.figures.ack_latency_s.append(time.monotonic() - sent)
                        self.figures.acked_at_s.setdefault(delivery.wamid, time.monotonic() - self.began)
                        self.figures.attempts += attempt
                        self.figures.retried += attempt > 1
                        self.figures.acknowledged.add(delivery.wamid)
                    return
                outcome = f"HTTP {response.status_code}: {response.text[:120]}"
                kind = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                outcome = repr(exc)[:120]
                kind = type(exc).__name__
            with self.figures.lock:
                self.figures.failed_attempts[kind] += 1
            time.sleep(RETRY_BACKOFF_S[min(attempt - 1, len(RETRY_BACKOFF_S) - 1)])
        with self.figures.lock:
            self.figures.attempts += attempt
            if delivery.wamid not in self.figures.acknowledged:
                self.figures.unacknowledged[delivery.wamid] = outcome

    def _take(self, count: int) -> list[Delivery]:
        with self._cursor_lock:
            taken = self.deliveries[self._cursor:self._cursor + count]
            self._cursor += len(taken)
            self.figures.posted += len(taken)
            return taken

    def burst(self, count: int) -> None:
        """Post the next `count` deliveries at once (Meta's traffic spikes), ahead of the schedule."""
        if self._pool is not None:
            for delivery in self._take(count):
                self._pool.submit(self._deliver, delivery)

    def _run(self) -> None:
        interval = 1.0 / self.plan.send_rate_per_s
        began = self.began = time.monotonic()
        with ThreadPoolExecutor(self.plan.sender_threads, thread_name_prefix="webhook") as pool:
            self._pool = pool
            while True:
                # A fixed schedule (not "as fast as acks come"): outages pile up retries like Meta's.
                delay = began + self._cursor * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                taken = self._take(1)
                if not taken:
                    break
                pool.submit(self._deliver, taken[0])
            self._pool = None
        with self.figures.lock:
            self.figures.finished_s = time.monotonic() - began
            self.figures.unacknowledged = {w: o for w, o in self.figures.unacknowledged.items()
                                           if w not in self.figures.acknowledged}
        self.done.set()


# ==================================================================== agents on their WebSocket streams


@dataclass
class Reply:
    """One reply an agent wrote (POST .../transactions/{tx}/messages) and what the API answered."""

    text: str  # unique in the run: how it is recognised at Meta (the simulator) and in the outbox
    tx: int
    agent: int
    outcome: str = "unanswered"  # the HTTP status, or "in doubt" (sent, the answer lost with the gateway)
    outbound_id: int | None = None  # the outbox row's id of a 202


class AgentWorker:
    """One agent's workspace: a stream that reconnects (with its cursor) across gateway deaths, and a worker
    that answers offers (accept / decline / ignore, seeded), closes chats after a hold, claims from manual
    inboxes and toggles presence.

    Phases: `chaos` while faults are injected; `drain` (available, accept everything, keep closing);
    `frozen` (accept offers, close nothing: open chats stay for the view check).
    """

    def __init__(self, gateway: Gateway, org: Org, agent: Agent, plan: FaultPlan, manual_inbox: int | None,
                 rng: random.Random) -> None:
        self.agent = agent
        self.plan = plan
        self.gateway = gateway
        self.org = org
        self.org_path = org.path()
        self.manual_inbox = manual_inbox
        self.rng = rng
        self.phase = "chaos"
        self.events: dict[int, Event] = {}
        self.received: dict[int, float] = {}  # event id -> time.monotonic() it arrived
        self.reconnects = 0
        # Answers a user would call failures: informational ones (a 409 the race explains) and server errors.
        self.http_failures: Counter[str] = Counter()
        self.server_errors: list[str] = []  # "{what} {status} {detail}" of every 5xx (after 503s were retried)
        self.unanswered: list[str] = []  # requests with no answer past their deadline
        self.replies: list[Reply] = []
        self._active: set[int] = set()
        self._close_due: dict[int, float] = {}
        self.set_away_in_end_game = 0  # times the router set the agent away after `drain` began
        self._reply_due: dict[int, list[float]] = {}  # tx -> when its next replies are written
        self._reply_seq = itertools.count(1)
        self._jobs: queue.Queue[Event | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._presence_lock = threading.Lock()
        self._http = httpx.Client(base_url=gateway.url, timeout=15, headers=auth(agent.token))
        self._threads = [threading.Thread(target=self._stream, name=f"agent-{agent.id}-stream", daemon=True),
                         threading.Thread(target=self._work, name=f"agent-{agent.id}-work", daemon=True),
                         threading.Thread(target=self._tick, name=f"agent-{agent.id}-tick", daemon=True)]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=20)
        self._http.close()

    # ------------------------------------------------------------------ the stream

    def _last_id(self) -> int | None:
        with self._lock:
            return max(self.events) if self.events else None

    def _stream(self) -> None:
        while not self._stop.is_set():
            try:
                sock = AgentSocket(self.gateway, self.org, self.agent.id, self.agent.token, cursor=self._last_id(),
                                   on_event=self._on_event)
            except Exception:  # the gateway is down or restarting: try again, as a browser would
                time.sleep(0.3)
                continue
            try:
                while not self._stop.is_set() and not sock.wait_closed(0.5):
                    pass
            finally:
                sock.close()
            if not self._stop.is_set():
                self.reconnects += 1

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if event["id"] in self.events:  # replayed after a reconnect
                return
            self.events[event["id"]] = event
            self.received[event["id"]] = time.monotonic()
        self._jobs.put(event)

    # ------------------------------------------------------------------ acting

    def _post(self, path: str, what: str, **kwargs: Any) -> int | None:
        response = call_through_outages(self._http, "POST", path, **kwargs)
        if response is None:
            self.unanswered.append(what)
            return None
        if response.status_code >= 500:
            self.http_failures[f"{what.split()[0]} {response.status_code} {_detail(response)}"] += 1
            self.server_errors.append(f"{what} {response.status_code} {_detail(response)}")
        return response.status_code

    def _put_status(self, status: str) -> None:
        response = call_through_outages(self._http, "PUT", f"{self.org_path}/agents/{self.agent.id}/status",
                                        json={"status": status})
        if response is None:
            self.unanswered.append(f"status {status}")
        elif response.status_code != 200:
            self.http_failures[f"status {status} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"status {status} {response.status_code} {_detail(response)}")

    def _work(self) -> None:
        while (event := self._jobs.get()) is not None:
            kind, tx_id = event.get("type"), int(event.get("transaction_id") or 0)
            if kind == "offer":
                self._answer_offer(tx_id)
            elif kind in ("assigned",) or (kind == "transferred" and event.get("direction") != "away"):
                now = time.monotonic()
                hold = self.rng.uniform(*self.plan.hold_s)
                replies = self.rng.randint(1, self.plan.max_replies) if self.rng.random() < self.plan.reply_p else 0
                with self._lock:
                    self._active.add(tx_id)
                    self._close_due[tx_id] = now + hold
                    # Written during the hold, before the close.
                    self._reply_due[tx_id] = sorted(now + self.rng.uniform(0.0, 0.9 * hold) for _ in range(replies))
            elif kind in ("transaction_closed", "transferred"):
                with self._lock:
                    self._active.discard(tx_id)
                    self._close_due.pop(tx_id, None)
                    self._reply_due.pop(tx_id, None)
            elif kind == "status" and event.get("status") != "available":
                self._back_to_available()

    def _back_to_available(self) -> None:
        """In the end game every agent is available: one the router set away (offers missed while the machine was
        slow: 1-second offers) sets itself available again, as a person back at their desk would."""
        with self._presence_lock:
            if self.phase != "chaos":
                self.set_away_in_end_game += 1
                self._put_status("available")

    def _answer_offer(self, tx_id: int) -> None:
        path = f"{self.org_path}/transactions/{tx_id}"
        if self.phase != "chaos":
            self._post(f"{path}/accept", f"accept {tx_id}")
            return
        roll = self.rng.random()
        if roll < self.plan.accept_p:
            # Sometimes late: an accept racing the 1-second timer is part of the scenario.
            time.sleep(self.rng.uniform(0.0, 0.9 * self.plan.reassign_after_s))
            self._post(f"{path}/accept", f"accept {tx_id}")
        elif roll < self.plan.accept_p + self.plan.decline_p:
            self._post(f"{path}/decline", f"decline {tx_id}")
        # else: ignored, the inbox's timer must move it on

    def _tick(self) -> None:
        """Closing chats whose hold ended, claiming from the manual inbox, presence toggles."""
        next_toggle = time.monotonic() + self.rng.uniform(*self.plan.presence_toggle_every_s)
        back_at: float | None = None
        next_claim = time.monotonic()
        while not self._stop.wait(0.1):
            now = time.monotonic()
            if self.phase != "frozen":
                with self._lock:
                    writing = [tx for tx, times in self._reply_due.items() if times and times[0] <= now]
                    for tx in writing:
                        self._reply_due[tx].pop(0)
                for tx in writing:
                    self._reply(tx)
                with self._lock:
                    due = [tx for tx, at in self._close_due.items() if at <= now]
                for tx in due:
                    code = self._post(f"{self.org_path}/transactions/{tx}/close", f"close {tx}")
                    with self._lock:
                        if code is None or code >= 500:
                            self._close_due[tx] = now + 1.0  # retried: the chat must end
                        else:
                            self._close_due.pop(tx, None)
                if self.manual_inbox is not None and now >= next_claim:
                    next_claim = now + self.plan.claim_every_s
                    self._claim_one()
            # Under the presence lock: a toggle never lands after `enter` made the agent available.
            with self._presence_lock:
                if self.phase == "chaos":
                    if back_at is None and now >= next_toggle:
                        self._put_status("away")
                        back_at = now + self.rng.uniform(*self.plan.away_for_s)
                    elif back_at is not None and now >= back_at:
                        self._put_status("available")
                        back_at = None
                        next_toggle = now + self.rng.uniform(*self.plan.presence_toggle_every_s)
                elif back_at is not None:
                    back_at = None

    def _reply(self, tx: int) -> None:
        """One text reply. Sent again only when nothing reached the gateway (refused connection, 502/503);
        an answer lost with a killed gateway leaves it in doubt, as for a user (it may or may not be queued)."""
        reply = Reply(f"reply o{self.org.id} a{self.agent.id} #{next(self._reply_seq)}", tx, self.agent.id)
        with self._lock:
            self.replies.append(reply)
        deadline = time.monotonic() + 60.0
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.post(f"{self.org_path}/transactions/{tx}/messages",
                                           json={"type": "text", "text": reply.text})
            except (httpx.ConnectError, httpx.ConnectTimeout):
                pass
            except httpx.HTTPError as exc:
                reply.outcome = f"in doubt ({type(exc).__name__})"
                return
            if response is not None and response.status_code not in (502, 503):
                break
            if time.monotonic() > deadline:
                self.unanswered.append(f"reply {tx}")
                return
            time.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            attempt += 1
        reply.outcome = str(response.status_code)
        if response.status_code == 202:
            reply.outbound_id = int(response.json()["id"])
        elif response.status_code >= 500:
            self.http_failures[f"reply {response.status_code} {_detail(response)}"] += 1
            self.server_errors.append(f"reply {tx} {response.status_code} {_detail(response)}")

    def _claim_one(self) -> None:
        with self._lock:
            if len(self._active) >= self._capacity():
                return
        response = call_through_outages(self._http, "GET", f"{self.org_path}/inboxes/{self.manual_inbox}/queue",
                                        give_up_after_s=2)
        if response is None or response.status_code != 200 or not response.json()["items"]:
            return
        entry = self.rng.choice(response.json()["items"][:3])
        self._post(f"{self.org_path}/transactions/{entry['id']}/claim", f"claim {entry['id']}")

    def _capacity(self) -> int:
        return self.plan.max_concurrent

    def enter(self, phase: str) -> None:
        with self._presence_lock:
            self.phase = phase
            if phase != "chaos":
                self._put_status("available")

    def stream(self) -> list[Event]:
        with self._lock:
            return [self.events[i] for i in sorted(self.events)]

    def stream_with_ids(self) -> list[tuple[int, Event]]:
        with self._lock:
            return [(i, self.events[i]) for i in sorted(self.events)]


# ==================================================================== kills

# The gateway under test runs with the default settings: this many store actors on PostgreSQL.
AGENT_STORE_ACTORS = Settings.model_fields["agent_store_actors"].default


@dataclass
class KillRecord:
    at_s: float  # seconds into the storm when the SIGKILL was sent
    kind: str  # inbox | agent | agent-store | sender | gateway
    target: str
    old_pid: int | None
    recovered: bool
    recovery_s: float | None
    pending_offers: list[tuple[int, int, int]]  # (transaction, agent, offer_seq) in the store just before
    note: str = ""
    affected: list[str] = field(default_factory=list)  # a node kill: the routing actors that ran there
    at_wall: float = 0.0  # time.time() of the kill (events carry wall-clock times)


def actor_pid(name: str, namespace: str, timeout_s: float = 5.0) -> int | None:
    """The OS process id of a named actor (asked of the actor itself), or None if it does not answer."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
        pid: Any = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=timeout_s)
        return int(pid)
    except Exception:
        return None


# Given the routing actors' pids by name: kills one worker node; returns (node id, raylet pid, names of the
# actors that ran there).
NodeKiller = Callable[[dict[str, int]], tuple[str, int, list[str]]]


class Killer:
    """SIGKILLs inbox actors, agent actors, agent store actors (PostgreSQL), the numbers' outbound senders and
    the gateway process on a seeded schedule."""

    def __init__(self, plan: FaultPlan, gateway: GatewayProcess, store: Gateway, namespace: str, org_id: int,
                 inbox_ids: list[int], agent_ids: list[int], window_s: float, rng: random.Random,
                 sender: WebhookStream, database: str, phone_numbers: list[str],
                 node_killer: NodeKiller | None = None) -> None:
        self.plan = plan
        self.sender = sender
        self.gateway = gateway
        self.store = store
        self.namespace = namespace
        self.org_id = org_id
        self.rng = rng
        kinds = (["inbox"] * plan.inbox_kills + ["agent"] * plan.agent_kills + ["gateway"] * plan.gateway_kills
                 + ["sender"] * plan.sender_kills)
        if database == "postgres":
            kinds += ["agent-store"] * plan.agent_store_kills
        if plan.node_kills:
            if node_killer is None:
                raise ValueError("a plan with node kills needs a multi-node cluster's node killer")
            kinds += ["node"] * plan.node_kills
        rng.shuffle(kinds)
        if "gateway" in kinds:
            # The last kill is the gateway's: a later inbox restart cannot heal what that one loses.
            kinds.remove("gateway")
            kinds.append("gateway")
        # Spread over the send window, leaving its first and last tenths quiet.
        count = max(len(kinds), 1)
        self.schedule = [(window_s * (0.1 + 0.8 * (i + rng.uniform(0.2, 0.8)) / count), kind)
                         for i, kind in enumerate(kinds)]
        self.targets = {"inbox": [f"inbox:{org_id}:{i}" for i in inbox_ids],
                        "agent": [f"agent:{org_id}:{a}" for a in agent_ids],
                        "agent-store": [agent_store_actor_name(i) for i in range(AGENT_STORE_ACTORS)],
                        "sender": [sender_actor_name(n) for n in phone_numbers]}
        self.node_killer = node_killer
        self.records: list[KillRecord] = []
        self.errors: list[str] = []
        self._watchers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        for watcher in self._watchers:
            watcher.join()

    def _pending_offers(self) -> list[tuple[int, int, int]]:
        rows = query_db(self.store, "SELECT id, offered_to, offer_seq FROM transactions "
                        "WHERE org_id = :org AND state = 'offered'", org=self.org_id)
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows if r[1] is not None]

    def _run(self) -> None:
        for at_s, kind in self.schedule:
            delay = self._began + at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                if kind == "gateway":
                    self.records.append(self._kill_gateway(at_s))
                elif kind == "node":
                    self.records.append(self._kill_node(at_s))
                else:
                    self.records.append(self._kill_actor(at_s, kind))
            except Exception as exc:  # reported, never hidden
                self.errors.append(f"{kind} kill at {at_s:.1f}s: {exc!r}")

    def _kill_actor(self, at_s: float, kind: str) -> KillRecord:
        targets = list(self.targets[kind])
        self.rng.shuffle(targets)
        pending = self._pending_offers()
        # A sender exists once its number had a reply to send: early in a run, or on a loaded machine where the
        # first replies come late, wait for one.
        give_up = time.monotonic() + (60.0 if kind == "sender" else 10.0)
        while True:
            for name in targets:
                # A busy machine may take seconds to answer; a kill skipped for that would not be the storm planned.
                pid = actor_pid(name, self.namespace, timeout_s=15.0)
                if pid is None:
                    continue
                os.kill(pid, signal.SIGKILL)
                record = KillRecord(self._now_s(), kind, name, pid, False, None, pending)
                # Watched from its own thread, so the next kill keeps to the schedule.
                watcher = threading.Thread(target=self._watch_restart, args=(record,), daemon=True)
                watcher.start()
                self._watchers.append(watcher)
                return record
            if time.monotonic() > give_up:
                return KillRecord(at_s, kind, "-", None, False, None, pending,
                                  note="no live actor of this kind to kill")
            time.sleep(1.0)

    def _kill_node(self, at_s: float) -> KillRecord:
        """A worker node lost: the node killer SIGKILLs every process of the worker node hosting most routing
        actors; recovered once each of them answers again from a new process (on a surviving node)."""
        assert self.node_killer is not None
        pending = self._pending_offers()
        names = [n for kind in ("inbox", "agent", "agent-store", "sender") for n in self.targets[kind]]
        pids = {name: pid for name in names if (pid := actor_pid(name, self.namespace, timeout_s=15.0)) is not None}
        at_wall = time.time()
        node, raylet_pid, affected = self.node_killer(pids)
        record = KillRecord(self._now_s(), "node", node, raylet_pid, False, None, pending, affected=affected,
                            at_wall=at_wall)
        watcher = threading.Thread(target=self._watch_node, args=(record, {n: pids[n] for n in affected}),
                                   daemon=True)
        watcher.start()
        self._watchers.append(watcher)
        return record

    def _watch_node(self, record: KillRecord, old: dict[str, int]) -> None:
        began = time.monotonic()
        waiting = dict(old)
        while waiting and time.monotonic() - began < 120:
            for name, old_pid in list(waiting.items()):
                pid = actor_pid(name, self.namespace, timeout_s=2)
                if pid is not None and pid != old_pid:
                    del waiting[name]
            time.sleep(0.2)
        if not waiting:
            record.recovered, record.recovery_s = True, time.monotonic() - began
        else:
            record.note = f"not back within 120 s: {sorted(waiting)}"

    def _now_s(self) -> float:
        """Seconds into the storm (the sender's clock), for lining kills up with messages."""
        return time.monotonic() - self.sender.began

    def _watch_restart(self, record: KillRecord) -> None:
        began = time.monotonic()
        while time.monotonic() - began < 60:
            pid = actor_pid(record.target, self.namespace, timeout_s=2)
            if pid is not None and pid != record.old_pid:
                record.recovered, record.recovery_s = True, time.monotonic() - began
                return
            time.sleep(0.2)

    def _kill_gateway(self, at_s: float) -> KillRecord:
        self.sender.burst(self.plan.burst_before_gateway_kill)
        time.sleep(self.plan.kill_after_burst_s)
        pending = self._pending_offers()
        pid = self.gateway.process.pid if self.gateway.process else None
        self.gateway.kill()
        at_s = self._now_s()
        time.sleep(self.plan.gateway_down_s)  # deliveries pile up and are retried, as Meta does
        began = time.monotonic()
        try:
            self.gateway.start()
        except RuntimeError as exc:
            return KillRecord(at_s, "gateway", "wa-router serve", pid, False, None, pending, note=str(exc)[:300])
        return KillRecord(at_s, "gateway", "wa-router serve", pid, True, time.monotonic() - began, pending)


# ==================================================================== invariants


@dataclass
class Violation:
    invariant: str
    count: int
    examples: list[str]

    def render(self) -> str:
        shown = "\n      ".join(self.examples[:8])
        return f"  ✗ {self.invariant}: {self.count}\n      {shown}"


@dataclass
class FaultReport:
    plan: FaultPlan
    database: str
    figures: dict[str, Any]
    violations: list[Violation]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, invariant: str) -> int:
        return sum(v.count for v in self.violations if v.invariant == invariant)

    def summary_line(self) -> str:
        f = self.figures
        return (f"fault-injection [{self.database}]: messages={f['messages']} deliveries={f['deliveries']} "
                f"acknowledged={f['acknowledged']} kills={f['kills']} recoveries={f['recoveries']} "
                f"lost={f['lost']} duplicated={f['duplicated']} double-assigned={f['double_assigned']} "
                f"stuck={f['stuck']} over-capacity={f['over_capacity']} view-mismatches={f['view_mismatches']} "
                f"offers-pending-at-kill={f['offers_pending_at_kill']} (unresolved={f['pending_unresolved']}) "
                f"replies={f.get('replies_accepted', 0)} (at Meta {f.get('replies_at_meta', 0)}) "
                f"wall={f['wall_s']:.0f}s")

    def render(self) -> str:
        lines = [self.summary_line()]
        lines += [f"  · {note}" for note in self.notes]
        if self.violations:
            lines.append(f"{len(self.violations)} invariant(s) violated:")
            lines += [v.render() for v in self.violations]
        else:
            lines.append("all invariants hold")
        return "\n".join(lines)


def _trail_holders(trail: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Walk an audit trail: (descriptions of moments two agents held it, whether it was ever held)."""
    holder: int | None = None
    doubles: list[str] = []
    held = False
    for event in trail:
        kind, agent = event["kind"], event["agent_id"]
        if kind in ("accepted", "claimed"):
            held = True
            if holder is not None and holder != agent:
                doubles.append(f"{kind} by {agent} at {event['at']} while held by {holder}")
            holder = agent
        elif kind == "transferred":
            held = True
            holder = agent
        elif kind in ("closed", "requeued"):
            holder = None
    return doubles, held


def _trail_over_capacity(trails: dict[int, list[dict[str, Any]]], limit: int) -> list[str]:
    """Per agent, the most conversations held at one instant according to the audit trail (store clock)."""
    spans: dict[int, list[tuple[str, int, int]]] = defaultdict(list)  # agent -> (time, +1/-1, tx)
    for tx, trail in trails.items():
        holder: int | None = None
        for event in trail:
            kind, agent, at = event["kind"], event["agent_id"], str(event["at"])
            if kind in ("accepted", "claimed", "transferred") and agent is not None:
                if holder is not None:
                    spans[holder].append((at, -1, tx))
                holder = int(agent)
                spans[holder].append((at, 1, tx))
            elif kind in ("closed", "requeued") and holder is not None:
                spans[holder].append((at, -1, tx))
                holder = None
    over: list[str] = []
    for agent, marks in sorted(spans.items()):
        held: set[int] = set()
        worst: tuple[int, str, list[int]] = (0, "", [])
        for at, step, tx in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at one instant
            if step > 0:
                held.add(tx)
            else:
                held.discard(tx)
            if len(held) > worst[0]:
                worst = (len(held), at, sorted(held))
        if worst[0] > limit:
            over.append(f"agent {agent}: {worst[0]} held at {worst[1]} ({worst[2]})")
    return over


def _stream_holdings(streams: dict[int, list[Event]], limit: int) -> tuple[dict[int, list[tuple[int, str, str]]],
                                                                           list[tuple[int, int, dict[int, str]]]]:
    """From every agent's stream: tx -> [(agent, assigned at, released at)], and over-capacity moments."""
    holdings: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    over: list[tuple[int, int, dict[int, str]]] = []
    for agent_id, events in streams.items():
        active: dict[int, str] = {}
        how: dict[int, str] = {}
        for event in events:
            kind = event["type"]
            tx = int(event.get("transaction_id") or 0)
            if kind == "assigned" or (kind == "transferred" and event.get("direction") != "away"):
                active[tx] = str(event["at"])
                how[tx] = f"{event.get('kind', kind)} at {str(event['at'])[11:23]}"
                if len(active) > limit:
                    over.append((agent_id, int(event["id"]), {t: how[t] for t in sorted(active)}))
            elif kind in ("transaction_closed", "transferred") and tx in active:
                holdings[tx].append((agent_id, active.pop(tx), str(event["at"])))
        for tx, since in active.items():
            holdings[tx].append((agent_id, since, "9999"))
    return holdings, over


def _unrouted_diagnosis(rows: list[tuple[Any, ...]], acked: set[str], sender: WebhookStream,
                        killer: Killer) -> list[str]:
    """Where in the run the unrouted messages were sent, per inbox, and which kills were near then."""
    lines: list[str] = []
    by_inbox: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r[0] in acked and r[1] is None:
            by_inbox[int(r[2])].append(sender.figures.acked_at_s.get(r[0], -1.0))
    for inbox, times in sorted(by_inbox.items()):
        low, high = min(times), max(times)
        near = [f"{k.kind} {k.target} at {k.at_s:.1f}s" for k in killer.records if low - 15 <= k.at_s <= high + 2]
        lines.append(f"[inbox {inbox}: {len(times)} messages acknowledged {low:.1f} to {high:.1f}s into the storm; "
                     f"kills near then: {', '.join(near) or 'none'}]")
    return lines


def request_violations(workers: list[AgentWorker]) -> list[tuple[str, list[str]]]:
    """Every agent request got its answer: any 5xx (503s retried for 60 s first) and any request left
    unanswered past its deadline is a violation."""
    return [("agent requests answered 5xx (503s retried for 60 s first)",
             [f"agent {w.agent.id}: {error}" for w in workers for error in w.server_errors]),
            ("agent requests left unanswered past their deadline",
             [f"agent {w.agent.id}: {what}" for w in workers for what in w.unanswered])]


def _messages_never_shown(attached: list[Any], streams: dict[int, list[Event]]) -> list[str]:
    """Messages of conversations that ended with an agent (assigned, or closed by it) that no agent's stream
    showed: as a `message`, or as the first message of an offer or an assignment."""
    shown: dict[int, set[int]] = {}
    for events in streams.values():
        for event in events:
            tx = event.get("transaction_id")
            if tx is None:
                continue
            ids = shown.setdefault(int(tx), set())
            message = event.get("message") if event["type"] == "message" else event.get("first_message")
            # A reply's echo carries an outbox id, not an inbound message's: it shows no customer message.
            if isinstance(message, dict) and message.get("id") is not None and message.get("direction") != "outbound":
                ids.add(int(message["id"]))
    return [f"tx {tx}: message {message_id} ({wamid})" for tx, message_id, wamid in attached
            if int(message_id) not in shown.get(int(tx), set())]


def check_invariants(plan: FaultPlan, store: Gateway, owner_token: str, org_id: int, sender: WebhookStream,
                     workers: list[AgentWorker], killer: Killer, max_concurrent: int) -> tuple[list[Violation],
                                                                                             dict[str, Any]]:
    violations: list[Violation] = []
    http = store.http
    figures: dict[str, Any] = {}

    def add(invariant: str, items: list[str], diagnosis: list[str] | None = None) -> None:
        if items:
            violations.append(Violation(invariant, len(items), (diagnosis or []) + items))

    # -- the sender itself: every delivery eventually acknowledged
    add("webhook deliveries never acknowledged (retried until the deadline)",
        [f"{w}: {o}" for w, o in sorted(sender.figures.unacknowledged.items())])

    # -- messages: stored once, attached to one conversation of the right inbox and customer
    rows = query_db(store, "SELECT m.wamid, m.transaction_id, m.inbox_id, m.from_wa_id, t.inbox_id, "
                    "t.customer_wa_id FROM inbound_messages m LEFT JOIN transactions t ON t.id = m.transaction_id "
                    "WHERE m.org_id = :org", org=org_id)
    stored = Counter(r[0] for r in rows)
    acked = sender.figures.acknowledged
    lost = sorted(acked - set(stored))
    duplicated = sorted(w for w, n in stored.items() if n > 1)
    unattached = sorted(f"{r[0]} (inbox {r[2]}, customer {r[3]})" for r in rows if r[0] in acked and r[1] is None)
    misattached = sorted(f"{r[0]}: message inbox {r[2]} customer {r[3]} but transaction {r[1]} is inbox {r[4]} "
                         f"customer {r[5]}" for r in rows if r[1] is not None and (r[2], r[3]) != (r[4], r[5]))
    add("acknowledged wamids not stored", lost)
    add("wamids stored more than once", duplicated)
    add("acknowledged messages attached to no conversation (stored, never routed)",
        unattached, _unrouted_diagnosis(rows, acked, sender, killer))
    add("messages attached to another customer's or inbox's conversation", misattached)
    figures.update(lost=len(lost) + len(unattached), duplicated=len(duplicated))

    # -- conversations: none stuck, each held by one agent at a time (audit trail)
    txs = query_db(store, "SELECT id, state, agent_id, offered_to, offer_seq, inbox_id FROM transactions "
                   "WHERE org_id = :org ORDER BY id", org=org_id)
    stuck_ids = [int(t[0]) for t in txs if t[1] in ("queued", "offered")]
    figures["stuck"] = len(stuck_ids)
    trail_doubles: dict[int, list[str]] = {}
    never_held_closed: list[str] = []
    trails: dict[int, list[dict[str, Any]]] = {}
    for t in txs:
        trail = _whole_trail(http, f"/v1/orgs/{org_id}/transactions/{t[0]}/events", owner_token)
        trails[int(t[0])] = trail
        doubles, held = _trail_holders(trail)
        if doubles:
            trail_doubles[int(t[0])] = doubles
        if t[1] == "closed" and not held:
            never_held_closed.append(f"tx {t[0]}: {[e['kind'] for e in trail]}")
    add("closed conversations that no agent ever held", never_held_closed)
    modes = {int(i): str(m) for i, m in query_db(store, "SELECT id, assignment_mode FROM inboxes WHERE org_id = :org",
                                                  org=org_id)}
    by_id = {int(t[0]): t for t in txs}
    add("conversations stuck queued or offered after quiescence (every agent available and accepting)",
        [f"tx {tx} (inbox {by_id[tx][5]}) {by_id[tx][1]}" + (f" to agent {by_id[tx][3]}" if by_id[tx][3] else "")
         + "; trail ends " + ", ".join(f"{e['kind']}({e['agent_id'] or '-'}) {str(e['at'])[11:19]}"
                                       for e in trails[tx][-4:]) for tx in stuck_ids],
        [f"[stuck per inbox: {dict(Counter(f'{by_id[tx][5]} ({modes.get(int(by_id[tx][5]))})' for tx in stuck_ids))}]"])

    streams = {w.agent.id: w.stream() for w in workers}
    # max_concurrent never changes during a run: the plan's value is the limit throughout.
    holdings, over = _stream_holdings(streams, max_concurrent)
    stream_doubles: dict[int, list[str]] = {}
    for tx, spans in holdings.items():
        spans.sort(key=lambda s: s[1])
        for (a1, _s1, e1), (a2, s2, _e2) in itertools.pairwise(spans):
            if a1 != a2 and s2 < e1:
                stream_doubles.setdefault(tx, []).append(f"agent {a2} assigned at {s2} while agent {a1} held it "
                                                         f"until {e1 if e1 != '9999' else 'the end'}")
    doubled = sorted(set(trail_doubles) | set(stream_doubles))
    add("conversations held by two agents at once (audit trail)",
        [f"tx {tx}: {'; '.join(d)}" for tx, d in sorted(trail_doubles.items())])
    add("conversations held by two agents at once (agents' streams)",
        [f"tx {tx}: {'; '.join(d)}" for tx, d in sorted(stream_doubles.items())])
    figures["double_assigned"] = len(doubled)
    add("messages of a conversation its agent kept never shown on an agent's stream",
        _messages_never_shown(query_db(store, "SELECT t.id, m.id, m.wamid FROM inbound_messages m JOIN transactions t "
                                             "ON t.id = m.transaction_id WHERE m.org_id = :org AND t.agent_id IS NOT "
                                             "NULL", org=org_id), streams))
    final_states = {int(t[0]): f"{t[1]}" + (f" by {t[2]}" if t[2] else "") for t in txs}
    add(f"agents over max_concurrent={max_concurrent} (their streams: assigned without a close between)",
        [f"agent {agent}: {len(active)} at stream event {event_id}: "
         + "; ".join(f"tx {t} {how} (store now: {final_states.get(t, '?')})" for t, how in active.items())
         for agent, event_id, active in over])
    trail_over = _trail_over_capacity(trails, max_concurrent)
    add(f"agents over max_concurrent={max_concurrent} (audit trail: accepted/claimed to closed)", trail_over)
    figures["over_capacity"] = len(over) + len(trail_over)

    # -- each agent's view matches the store (the store is the single truth)
    mismatches: list[str] = []
    for attempt in range(3):
        mismatches = []
        assigned = query_db(store, "SELECT agent_id, id FROM transactions WHERE org_id = :org AND state = 'assigned'",
                            org=org_id)
        offered = query_db(store, "SELECT offered_to, id FROM transactions WHERE org_id = :org AND state = 'offered'",
                           org=org_id)
        statuses = dict(query_db(store, "SELECT user_id, status FROM agent_states WHERE org_id = :org", org=org_id))
        for worker in workers:
            agent_id = worker.agent.id
            response = call_through_outages(http, "GET", f"/v1/orgs/{org_id}/agents/{agent_id}",
                                            headers=auth(owner_token))
            if response is None or response.status_code != 200:
                mismatches.append(f"agent {agent_id}: GET answered "
                                  f"{response.status_code if response is not None else 'nothing'}")
                continue
            view = response.json()
            want_active = sorted(int(r[1]) for r in assigned if r[0] == agent_id)
            want_offer = sorted(int(r[1]) for r in offered if r[0] == agent_id)
            have_offer = [view["pending_offer"]["transaction_id"]] if view["pending_offer"] else []
            if sorted(view["active_transactions"]) != want_active:
                mismatches.append(f"agent {agent_id}: view active {sorted(view['active_transactions'])} "
                                  f"≠ store assigned {want_active}")
            if have_offer != want_offer:
                mismatches.append(f"agent {agent_id}: view pending offer {have_offer} ≠ store offered {want_offer}")
            if statuses.get(agent_id) != view["status"]:
                mismatches.append(f"agent {agent_id}: view status {view['status']} ≠ store {statuses.get(agent_id)}")
        if not mismatches:
            break
        time.sleep(1.0 + attempt)
    add("agent views (GET /agents/{id}) that disagree with the store", mismatches)
    figures["view_mismatches"] = len(mismatches)

    # -- offers pending at a kill: each expired (or was answered) and the conversation moved on
    final = {int(t[0]): (t[1], t[3], int(t[4])) for t in txs}
    pending_total = 0
    unresolved: list[str] = []
    resolved_kinds: Counter[str] = Counter()
    for record in killer.records:
        for tx, agent, seq in record.pending_offers:
            pending_total += 1
            state, offered_to, final_seq = final.get(tx, ("missing", None, seq))
            if state == "offered" and offered_to == agent and final_seq == seq:
                unresolved.append(f"tx {tx} offered to agent {agent} (seq {seq}) at the {record.kind} kill at "
                                  f"{record.at_s:.1f}s is still offered to them")
                continue
            later = [e["kind"] for e in trails.get(tx, []) if e["agent_id"] == agent
                     and e["kind"] in ("accepted", "missed", "declined", "rescinded")]
            resolved_kinds[later[-1] if later else "moved on"] += 1
    add("offers pending at a kill that never expired", unresolved)
    figures.update(offers_pending_at_kill=pending_total, pending_unresolved=len(unresolved),
                   pending_resolved_by=dict(resolved_kinds))

    # -- the harness's own observations that a user would call failures
    add("kills after which the actor or gateway did not come back",
        [f"{r.kind} {r.target} at {r.at_s:.1f}s: {r.note or 'no new process within 60s'}"
         for r in killer.records if not r.recovered and r.note != "no live actor of this kind to kill"])
    for invariant, items in request_violations(workers):
        add(invariant, items)
    figures["transactions"] = len(txs)
    return violations, figures


def check_replies(store: Gateway, simulator: SimulatorState, org_id: int, numbers: list[str],
                  workers: list[AgentWorker]) -> tuple[list[Violation], dict[str, Any]]:
    """The replies' invariants (`judge_replies`) over the agents' records, the outbox and Meta's record."""
    rows = query_db(store, "SELECT id, summary, state, wamid, phone_number_id, to_wa_id, error_code, error_title "
                           "FROM outbound_messages WHERE org_id = :org", org=org_id)
    ours = set(numbers)
    with simulator._lock:  # the simulator's server thread appends while we read
        at_meta = [m for m in simulator.sent_messages if m.phone_number_id in ours]
        given_up = list(simulator.statuses_given_up)
    stored = defaultdict(list)
    for wamid, status in query_db(store, "SELECT wamid, status FROM message_statuses WHERE org_id = :org "
                                         "ORDER BY id", org=org_id):
        stored[str(wamid)].append(str(status))
    return judge_replies([r for w in workers for r in w.replies], rows, at_meta, given_up, stored)


def judge_replies(replies: list[Reply], outbox: list[tuple[Any, ...]], at_meta: list[SentMessage],
                  given_up: list[GivenUpStatus] | None = None, stored_statuses: dict[str, list[str]] | None = None,
                  ) -> tuple[list[Violation], dict[str, Any]]:
    """Agents' replies through the kills: each one answered 202 reached Meta (the simulator's record) exactly
    once, in outbox order per customer, with the statuses Meta posted applied (its row `read`, Meta's wamid);
    none in doubt sent twice; nothing at Meta that no agent wrote.

    `outbox`: (id, summary, state, wamid, phone_number_id, to_wa_id, error_code, error_title) rows.
    `given_up` (the status webhooks Meta stopped posting without a 200) and `stored_statuses` (wamid -> the
    statuses the store took) say, for a reply whose statuses were not applied, where they stopped.
    """
    violations: list[Violation] = []

    def add(invariant: str, items: list[str]) -> None:
        if items:
            violations.append(Violation(invariant, len(items), items))

    written = {r.text: r for r in replies}
    accepted = [r for r in replies if r.outcome == "202"]
    in_doubt = [r for r in replies if r.outcome.startswith("in doubt")]
    rows = {str(r[1]): r for r in outbox}

    def text_of(message: SentMessage) -> str:
        return str(message.payload.get("text", {}).get("body"))

    sent = Counter(text_of(m) for m in at_meta)
    wamid_at_meta = {text_of(m): m.id for m in at_meta}
    add("replies answered 202 missing from the outbox",
        [f"{r.text} (tx {r.tx}, outbox id {r.outbound_id})" for r in accepted
         if r.text not in rows or int(rows[r.text][0]) != r.outbound_id])
    add("replies answered 202 never sent to Meta",
        [f"{r.text} (tx {r.tx}): outbox {rows[r.text][2] if r.text in rows else 'missing'}"
         + (f" {rows[r.text][6]} {rows[r.text][7]}" if r.text in rows and rows[r.text][6] else "")
         for r in accepted if sent[r.text] == 0])
    add("replies sent to Meta more than once", [f"{text} x{n}" for text, n in sorted(sent.items()) if n > 1])
    add("messages at Meta that no agent wrote", sorted(t for t in sent if t not in written))
    def where_statuses_stopped(wamid: str) -> str:
        missed = [f"{g.status} after {g.attempts} posts (last answer {g.last_answer})"
                  for g in given_up or () if g.wamid == wamid]
        posts = f"Meta gave up posting {', '.join(missed)}" if missed else \
            "no post given up (each answered 200, or still retried)"
        return f"; stored statuses {(stored_statuses or {}).get(wamid, [])}; {posts}"

    add("replies answered 202 without Meta's statuses applied (outbox row not read with Meta's wamid)",
        [f"{r.text}: {rows[r.text][2]} wamid {str(rows[r.text][3])[:24]} (Meta's {wamid_at_meta[r.text][:24]})"
         + (where_statuses_stopped(wamid_at_meta[r.text]) if stored_statuses is not None else "")
         for r in accepted if sent[r.text] and r.text in rows
         and (rows[r.text][2] != "read" or rows[r.text][3] != wamid_at_meta[r.text])])
    # Order per customer: Meta received each customer's replies in the order the outbox holds them.
    by_customer: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for message in at_meta:
        text = text_of(message)
        if text in rows:
            by_customer[(message.phone_number_id, message.to)].append((int(rows[text][0]), text))
    add("customers who got replies out of outbox order",
        [f"{number}/{to}: {[text for _, text in seq]}" for (number, to), seq in sorted(by_customer.items())
         if [i for i, _ in seq] != sorted(i for i, _ in seq)])
    figures = {"replies": len(replies), "replies_accepted": len(accepted), "replies_in_doubt": len(in_doubt),
               "replies_in_doubt_sent": sum(1 for r in in_doubt if sent[r.text]),
               "replies_refused": dict(Counter(r.outcome for r in replies
                                               if r.outcome != "202" and not r.outcome.startswith("in doubt"))),
               "replies_at_meta": sum(sent[r.text] for r in replies),
               "replies_read": sum(1 for r in accepted if r.text in rows and rows[r.text][2] == "read")}
    return violations, figures


def _event_wall(event: Event) -> float:
    """An event's `at` (ISO, UTC when naive) as epoch seconds."""
    from datetime import UTC, datetime

    at = datetime.fromisoformat(str(event["at"]).replace("Z", "+00:00"))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def node_loss_figures(killer: Killer, workers: list[AgentWorker], sender: WebhookStream,
                      org_id: int) -> list[dict[str, Any]]:
    """Per node kill: what ran there, when it was all back, and the time from the kill to the first offer of an
    affected inbox and to the first customer message (a follow-up) delivered to an affected agent's stream,
    counting only events made after the kill."""
    found: list[dict[str, Any]] = []
    for record in (r for r in killer.records if r.kind == "node"):
        killed_at = sender.began + record.at_s
        inboxes = {int(n.rsplit(":", 1)[1]) for n in record.affected if n.startswith(f"inbox:{org_id}:")}
        agents = {int(n.rsplit(":", 1)[1]) for n in record.affected if n.startswith(f"agent:{org_id}:")}
        first_offer: float | None = None
        first_follow_up: float | None = None
        for worker in workers:
            for event_id, event in worker.stream_with_ids():
                arrived = worker.received.get(event_id)
                if arrived is None or arrived < killed_at or _event_wall(event) < record.at_wall:
                    continue
                if event["type"] == "offer" and int(event.get("inbox_id") or 0) in inboxes:
                    first_offer = min(first_offer or arrived, arrived)
                message = event.get("message")
                if (event["type"] == "message" and worker.agent.id in agents and isinstance(message, dict)
                        and message.get("direction") != "outbound"):
                    first_follow_up = min(first_follow_up or arrived, arrived)
        found.append({"node": record.target, "at_s": round(record.at_s, 1), "affected": sorted(record.affected),
                      "all_back_s": None if record.recovery_s is None else round(record.recovery_s, 1),
                      "first_offer_of_affected_inbox_s": None if first_offer is None
                      else round(first_offer - killed_at, 1),
                      "first_follow_up_to_affected_agent_s": None if first_follow_up is None
                      else round(first_follow_up - killed_at, 1)})
    return found


def wait_outbox_settled(store: Gateway, org_id: int, plan: FaultPlan) -> tuple[bool, float, int]:
    """Until every outbound message is sent and read (or failed), bounded: (reached, seconds, unsettled left)."""
    began = time.monotonic()
    left = 0
    while time.monotonic() - began < plan.quiescence_timeout_s:
        left = int(query_db(store, "SELECT count(*) FROM outbound_messages WHERE org_id = :org "
                            "AND state NOT IN ('read', 'played', 'failed')", org=org_id)[0][0])
        if left == 0:
            return True, time.monotonic() - began, 0
        time.sleep(0.5)
    return False, time.monotonic() - began, left


# ==================================================================== the run


def wait_quiescent(store: Gateway, org_id: int, plan: FaultPlan) -> tuple[bool, float, int]:
    """Until no conversation is queued or offered for `quiet_for_s` (bounded): (reached, seconds, open left)."""
    began = time.monotonic()
    quiet_since: float | None = None
    left = 0
    while time.monotonic() - began < plan.quiescence_timeout_s:
        left = int(query_db(store, "SELECT count(*) FROM transactions WHERE org_id = :org "
                            "AND state IN ('queued', 'offered')", org=org_id)[0][0])
        if left == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= plan.quiet_for_s:
                return True, time.monotonic() - began, 0
        else:
            quiet_since = None
        time.sleep(0.5)
    return False, time.monotonic() - began, left


def run_fault_injection(plan: FaultPlan, *, database_url: str, database: str, simulator: SimulatorState,
                        simulator_url: str, workdir: Path, log: Any = print,
                        gateway_env: dict[str, str] | None = None,
                        node_killer: NodeKiller | None = None, gateways: int = 1) -> FaultReport:
    """One whole run against a fresh store. The caller owns a Ray instance (`ray.init`) and the simulator.

    `gateways=2`: a second gateway of the same deployment (store, Ray cluster and namespace, key); webhooks
    alternate between the two, half the agents work through each, and the gateway kills hit the second one.
    """
    began = time.monotonic()
    rng = random.Random(plan.seed)
    namespace = f"wa-router-fault-{uuid.uuid4().hex[:8]}"
    admin_token = f"admin-{secrets.token_urlsafe(32)}"
    gcs_address = ray.get_runtime_context().gcs_address
    own_env = {"WA_ROUTER_SEND_PAIR_INTERVAL_S": str(plan.pair_interval_s), **(gateway_env or {})}
    process = GatewayProcess(database_url=database_url, ray_address=gcs_address, namespace=namespace,
                             graph_url=f"{simulator_url}/v25.0", workdir=workdir, admin_token=admin_token,
                             port=free_port(), extra_env=own_env)
    store = Gateway(url=process.url, admin_token=admin_token, simulator=simulator, simulator_url=simulator_url,
                    database_url=database_url, namespace=namespace)
    # The other gateways: a port and a log of their own, the first one's key file (one key per deployment).
    others: list[GatewayProcess] = []
    for n in range(2, gateways + 1):
        (workdir / f"gateway-{n}").mkdir(exist_ok=True)
        others.append(GatewayProcess(database_url=database_url, ray_address=gcs_address, namespace=namespace,
                                     graph_url=f"{simulator_url}/v25.0", workdir=workdir / f"gateway-{n}",
                                     admin_token=admin_token, port=free_port(),
                                     extra_env={**own_env, "WA_ROUTER_SECRET_KEY_FILE": str(workdir / "secret.key")}))
    stores = [store] + [Gateway(url=other.url, admin_token=admin_token, simulator=simulator,
                                simulator_url=simulator_url, database_url=database_url, namespace=namespace)
                        for other in others]
    workers: list[AgentWorker] = []
    notes: list[str] = []
    try:
        for gateway_process in [process, *others]:
            gateway_process.start()
            log(f"[{database}] gateway pid {gateway_process.process.pid if gateway_process.process else '?'} on "
                f"{gateway_process.url}, Ray {gcs_address}, namespace {namespace}")
        # ---- the organization: one inbox per mode, every agent in every inbox
        org = org_with_waba(store, numbers=len(MODES))
        sc = Scenario(store, org)
        agents = sc.agents(plan.agents, max_concurrent=plan.max_concurrent)
        inbox_ids: list[int] = []
        for index, mode in enumerate(MODES):
            proficiency = {a.id: rng.randint(1, 5) for a in agents}
            inbox_ids.append(sc.inbox(agents, mode=mode, reassign_after_s=plan.reassign_after_s, number=index,
                                      dials_per_agent=plan.sticky_dials if mode == "sticky" else 1,
                                      proficiency=proficiency))
        manual_inbox = inbox_ids[MODES.index("manual")]
        for agent in agents:
            worker = AgentWorker(stores[len(workers) % len(stores)], org, agent, plan, manual_inbox,
                                 random.Random(rng.random()))
            workers.append(worker)
            worker.start()
        # ---- the storm: webhooks, agents in chaos, kills
        run_id = uuid.uuid4().hex[:8]
        deliveries, customers = plan_deliveries(plan, org.waba_id, org.numbers, org.app_secret, run_id,
                                                random.Random(rng.random()))
        # Meta's side of the replies: statuses posted back (retried until a 200, as Meta does, so a gateway
        # death loses none), the customers' windows open, the pair limit below the senders' pacing.
        simulator.set_callback_url(org.waba_id, f"{store.url}/webhooks/whatsapp/{org.id}")
        for index, number in enumerate(org.numbers):
            simulator.set_delivery_plan(number, DeliveryPlan(enabled=True, retry_for_s=plan.ack_deadline_s))
            simulator.set_pair_interval(number, plan.pair_interval_s / 2)
            for customer in customers[index]:
                simulator.record_inbound(number, customer)
        sender = WebhookStream(plan, f"{store.url}/webhooks/whatsapp/{org.id}", org.app_secret, deliveries,
                               [f"{other.url}/webhooks/whatsapp/{org.id}" for other in others])
        window_s = len(deliveries) / plan.send_rate_per_s
        killer = Killer(plan, (others or [process])[-1], store, namespace, org.id, inbox_ids, [a.id for a in agents],
                        window_s, random.Random(rng.random()), sender, database, org.numbers, node_killer)
        log(f"[{database}] sending {len(deliveries)} deliveries ({plan.messages} messages) over ~{window_s:.0f}s "
            f"with {plan.kills_on(database)} kills")
        sender.start()
        killer.start()
        sender.join()
        killer.join()
        sender.done.wait()
        storm_s = time.monotonic() - began
        log(f"[{database}] storm over after {storm_s:.0f}s: {len(sender.figures.acknowledged)} acknowledged, "
            f"{sender.figures.retried} deliveries needed retries, {len(killer.records)} kills")
        # ---- the end game: every agent available and accepting, then quiescence
        for worker in workers:
            worker.enter("drain")
        reached, waited, left = wait_quiescent(store, org.id, plan)
        notes.append(f"quiescence {'reached' if reached else 'NOT reached'} after {waited:.0f}s"
                     + ("" if reached else f" ({left} conversations still queued/offered)")
                     + f"; agents set away for missed offers in it, then available again: "
                       f"{sum(w.set_away_in_end_game for w in workers)}")
        for worker in workers:
            worker.enter("frozen")
        time.sleep(plan.reassign_after_s + 1.0)  # let any in-flight offer settle before comparing views
        settled, settle_s, unsettled = wait_outbox_settled(store, org.id, plan)
        notes.append(f"outbox {'settled' if settled else 'NOT settled'} after {settle_s:.0f}s"
                     + ("" if settled else f" ({unsettled} replies not yet read)"))
        violations, figures = check_invariants(plan, store, org.owner_token, org.id, sender, workers, killer,
                                               plan.max_concurrent)
        reply_violations, reply_figures = check_replies(store, simulator, org.id, org.numbers, workers)
        violations += reply_violations
        figures.update(reply_figures)
        figures["node_losses"] = node_loss_figures(killer, workers, sender, org.id)
        notes += [f"node lost: {n}" for n in figures["node_losses"]]
        kills_by_kind = Counter(r.kind for r in killer.records if r.old_pid is not None)
        figures.update(
            messages=plan.messages, deliveries=len(deliveries), acknowledged=len(sender.figures.acknowledged),
            attempts=sender.figures.attempts, retried=sender.figures.retried,
            kills=sum(kills_by_kind.values()), kills_by_kind=dict(kills_by_kind),
            recoveries=sum(1 for r in killer.records if r.recovered),
            reconnects=sum(w.reconnects for w in workers), gateway_starts=sum(p.starts for p in [process, *others]),
            gateways=1 + len(others), acked_by_gateway=[sender.figures.acked_by[u] for u in sender.urls],
            wall_s=time.monotonic() - began,
        )
        restarts = ", ".join(f"{s:.1f}" for s in killer.gateway.start_seconds[1:])
        recoveries = ", ".join(f"{r.recovery_s:.1f}" for r in killer.records if r.kind != "gateway" and r.recovery_s)
        notes.append(f"kills: {dict(kills_by_kind)}; gateway restarts took {restarts} s; actor restarts took "
                     f"{recoveries} s")
        notes.append(f"{figures['transactions']} conversations; {sender.figures.retried} deliveries retried "
                     f"({sender.figures.attempts} attempts); {figures['reconnects']} stream reconnects; "
                     f"offers pending at kills resolved by {figures['pending_resolved_by']}")
        notes.append(f"replies: {figures['replies']} written, {figures['replies_accepted']} answered 202 "
                     f"({figures['replies_read']} read), refused {figures['replies_refused']}, "
                     f"{figures['replies_in_doubt']} in doubt ({figures['replies_in_doubt_sent']} of them sent); "
                     f"{figures['replies_at_meta']} at Meta")
        notes.append(sender.latency_note())
        if others:
            notes.append(f"{1 + len(others)} gateways: webhooks acknowledged by each "
                         f"{figures['acked_by_gateway']}; the last one killed and restarted")
        notes += [f"killer: {e}" for e in killer.errors]
        return FaultReport(plan, database, figures, violations, notes)
    finally:
        for worker in workers:
            worker.stop()
        for gateway_process in [*others, process]:
            gateway_process.stop()
        _kill_namespace(namespace)


def _kill_namespace(namespace: str) -> None:
    """The run's actors are processes that outlive the gateway (detached): stop them all."""
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == namespace:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(entry["name"], namespace=namespace), no_restart=True)


# ==================================================================== `make soak`


@contextlib.contextmanager
def _database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'wa_router.db'}"
        return
    from tests.support import create_postgres_database, drop_postgres_database, postgres_database_url

    name = asyncio.run(create_postgres_database())
    if name is None:
        raise SystemExit("PostgreSQL is not reachable (WA_ROUTER_TEST_POSTGRES)")
    try:
        yield postgres_database_url(name)
    finally:
        asyncio.run(drop_postgres_database(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fault-injection soak of the routing core.")
    parser.add_argument("--long", action="store_true", help="the soak's sizes (default: the short variant)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    for name, value in vars(SHORT).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    plan = LONG if args.long else SHORT
    overrides = {name: getattr(args, name) for name in vars(SHORT) if getattr(args, name, None) is not None}
    plan = replace(plan, **overrides)

    from gateway.background_server import BackgroundServer
    from meta.simulator.app import create_simulator_app

    ray.init(address="local", namespace="wa-router-soak", include_dashboard=False, log_to_driver=False,
             configure_logging=False, _system_config=RAY_SYSTEM_CONFIG)
    state = SimulatorState()
    reports: list[FaultReport] = []
    try:
        with BackgroundServer(create_simulator_app(state)) as simulator:
            for kind in (["sqlite", "postgres"] if args.database == "both" else [args.database]):
                with tempfile.TemporaryDirectory(prefix=f"fault-{kind}-") as tmp, _database(kind, Path(tmp)) as url:
                    report = run_fault_injection(plan, database_url=url, database=kind, simulator=state,
                                                 simulator_url=simulator.url, workdir=Path(tmp),
                                                 log=lambda line: print(line, flush=True))
                    print(report.render(), flush=True)
                    reports.append(report)
    finally:
        ray.shutdown()
    print("\n".join(r.summary_line() for r in reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
