"""`wa-router demo`: the whole product running locally, with simulated customers and agents.

It starts the Meta simulator and the gateway (local Ray, SQLite in a temporary directory), sets up a
sample organization through the real HTTP API (a linked WABA, a template under review, one inbox per
assignment mode), then keeps customers writing (through the simulator's signed webhooks) and
simulated agents accepting, declining, replying and closing. One more agent is left to the person
watching: their console link is printed. Ctrl-C (or `duration_s`) stops everything it started.
"""

from __future__ import annotations

import os
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from config.settings import Settings
from gateway.app import create_app
from gateway.background_server import BackgroundServer
from gateway.cluster_record import ray_address, record_cluster, remove_record
from meta.simulator.app import create_simulator_app
from meta.simulator.state import DeliveryPlan, ReviewPlan, SimulatorState, seed_demo
from routing.model import AssignmentMode

CUSTOMERS = ["Carla", "Bruno", "Mei", "Tomás", "Aisha", "Lena", "Ravi", "Sofia", "Jonas", "Yuki", "Omar", "Zoe"]
OPENERS = ["Hi, my order is late", "Can I change my delivery address?", "Do you ship to Portugal?",
           "My parcel arrived damaged", "How do I return an item?", "Is the blue one back in stock?"]
AGENTS = ["Ada", "Ben", "Chloe", "Dev"]
MODES = [mode.value for mode in AssignmentMode]  # one inbox per assignment mode


@dataclass(frozen=True)
class DemoOptions:
    port: int = 8000
    simulator_port: int = 9000
    # Stop after this long (tests, recordings); None runs until Ctrl-C.
    duration_s: float | None = None
    customer_every_s: float = 4.0
    review_delay_s: float = 8.0
    seed: int | None = None


@dataclass
class DemoSetup:
    org_id: int
    owner_token: str
    console_agent_token: str
    agents: dict[int, str]  # simulated agents: user id -> token
    inboxes: dict[str, int]  # mode -> inbox id
    numbers: dict[str, str]  # mode -> phone number id
    waba_id: str


@dataclass
class _AgentState:
    replied: dict[int, float] = field(default_factory=dict)  # transaction -> when to close it (after replying)
    decided: set[int] = field(default_factory=set)


class DemoError(Exception):
    pass


def _ok(http: httpx.Client, method: str, path: str, token: str | None, expected: int = 200, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = http.request(method, path, headers=headers, **kwargs)
    if response.status_code != expected:
        raise DemoError(f"{method} {path} answered {response.status_code}: {response.text[:200]}")
    return response.json() if response.content else None


def set_up(http: httpx.Client, sim: httpx.Client, admin_token: str, seeded: dict[str, Any],
           gateway_url: str) -> DemoSetup:
    """The sample organization, all through the public API (as a supervisor would click it)."""
    org = _ok(http, "POST", "/v1/orgs", admin_token, 201, json={
        "name": "Acme Support", "owner": {"name": "Sam Supervisor", "email": "sam@acme.test"}})
    org_id, owner = org["id"], org["owner"]["token"]
    base = f"/v1/orgs/{org_id}"
    waba_id = seeded["waba_id"]
    _ok(http, "POST", f"{base}/whatsapp/accounts", owner, 201, json={
        "waba_id": waba_id, "access_token": seeded["access_token"], "app_secret": seeded["app_secret"]})
    _ok(sim, "PUT", f"/_sim/wabas/{waba_id}/callback", None,
        json={"callback_url": f"{gateway_url}/webhooks/whatsapp/{org_id}"})
    # A template under Meta's (simulated) review: PENDING now, APPROVED after the review delay.
    _ok(http, "POST", f"{base}/whatsapp/accounts/{waba_id}/templates", owner, 201, json={
        "name": "order_update", "category": "UTILITY", "languages": ["en_US"],
        "body": "Hello {{1}}, your order {{2}} is on its way."})
    licences = ["phone_system", "contact_center_whatsapp"]
    agents: dict[int, str] = {}
    for name in AGENTS:
        user = _ok(http, "POST", f"{base}/users", owner, 201, json={
            "name": name, "email": f"{name.lower()}@acme.test", "role": "member", "licenses": licences})
        agents[user["id"]] = user["token"]
    you = _ok(http, "POST", f"{base}/users", owner, 201, json={
        "name": "You", "email": "you@acme.test", "role": "member", "licenses": licences})
    numbers = [n["id"] for n in seeded["numbers"]]
    inboxes: dict[str, int] = {}
    by_mode: dict[str, str] = {}
    for index, (mode, number) in enumerate(zip(MODES, numbers, strict=False)):
        members = [{"user_id": uid, "proficiency": 10 * (i + 1)} for i, uid in enumerate(agents)]
        members.append({"user_id": you["id"], "proficiency": 50})
        inbox = _ok(http, "POST", f"{base}/inboxes", owner, 201, json={
            "name": f"{mode.replace('_', ' ').title()} desk", "phone_number_id": number, "assignment_mode": mode,
            "reassign_after_s": 20 + 5 * index, "dials_per_agent": 2, "agents": members})
        inboxes[mode], by_mode[mode] = inbox["id"], number
    for uid, token in agents.items():
        _ok(http, "PATCH", f"{base}/agents/{uid}", owner, json={"max_concurrent": 2})
        _ok(http, "PUT", f"{base}/agents/{uid}/status", token, json={"status": "available"})
    return DemoSetup(org_id=org_id, owner_token=owner, console_agent_token=you["token"], agents=agents,
                     inboxes=inboxes, numbers=by_mode, waba_id=waba_id)


class Simulation:
    """Customers writing and agents answering, on one background thread."""

    def __init__(self, http: httpx.Client, sim: httpx.Client, setup: DemoSetup, options: DemoOptions) -> None:
        self.http, self.sim, self.setup, self.options = http, sim, setup, options
        self.rng = random.Random(options.seed)
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._agents = {uid: _AgentState() for uid in setup.agents}
        self._thread = threading.Thread(target=self._run, name="demo-simulation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        next_customer = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_customer:
                self._customer_writes()
                next_customer = now + self.options.customer_every_s
            for uid in self.setup.agents:
                self._agent_step(uid)
            self._claim_manual()
            self.stop.wait(0.5)

    def _safe(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response | None:
        try:
            return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        except httpx.HTTPError:
            self.counts["request errors"] += 1  # the gateway may be shutting down: keep going
            return None

    def _customer_writes(self) -> None:
        mode = self.rng.choice(MODES)
        index = self.rng.randrange(len(CUSTOMERS))
        try:
            self.sim.post("/_sim/inbound", json={
                "phone_number_id": self.setup.numbers[mode], "from": f"49151{index:07d}", "name": CUSTOMERS[index],
                "type": "text", "fields": {"body": self.rng.choice(OPENERS)}})
            self.counts["customer messages"] += 1
        except httpx.HTTPError:
            self.counts["request errors"] += 1

    def _agent_step(self, uid: int) -> None:
        token = self.setup.agents[uid]
        base = f"/v1/orgs/{self.setup.org_id}"
        state = self._agents[uid]
        response = self._safe("GET", f"{base}/agents/{uid}", token)
        if response is None or response.status_code != 200:
            return
        view = response.json()
        offer = view.get("pending_offer")
        if offer and offer["transaction_id"] not in state.decided:
            tx = offer["transaction_id"]
            state.decided.add(tx)
            roll = self.rng.random()
            if roll < 0.7:
                if self._action(base, tx, "accept", token):
                    self.counts["accepted"] += 1
            elif roll < 0.9:
                if self._action(base, tx, "decline", token):
                    self.counts["declined"] += 1
            else:
                self.counts["let ring"] += 1  # the offer times out and moves on to another agent
        for tx in view.get("active_transactions", []):
            replied = state.replied.get(tx)
            if replied is None:
                answer = self._safe("POST", f"{base}/transactions/{tx}/messages", token, json={
                    "type": "text", "text": self.rng.choice(["Hi! Let me check that for you.",
                                                             "Thanks for writing, I'm on it.",
                                                             "Hello, happy to help."])})
                if answer is not None and answer.status_code == 202:
                    self.counts["replies"] += 1
                state.replied[tx] = time.monotonic() + self.rng.uniform(6, 14)  # when the agent will close it
            elif time.monotonic() > replied and self._action(base, tx, "close", token):
                self.counts["closed"] += 1

    def _action(self, base: str, tx: int, action: str, token: str) -> bool:
        response = self._safe("POST", f"{base}/transactions/{tx}/{action}", token)
        return response is not None and response.status_code == 200

    def _claim_manual(self) -> None:
        inbox = self.setup.inboxes.get(AssignmentMode.MANUAL.value)
        if inbox is None:
            return
        uid = self.rng.choice(list(self.setup.agents))
        token = self.setup.agents[uid]
        base = f"/v1/orgs/{self.setup.org_id}"
        response = self._safe("GET", f"{base}/inboxes/{inbox}/queue", token, params={"limit": 1})
        if response is None or response.status_code != 200 or not response.json()["items"]:
            return
        if self._action(base, response.json()["items"][0]["id"], "claim", token):
            self.counts["claimed"] += 1


def conversation_states(http: httpx.Client, setup: DemoSetup) -> Counter[str]:
    """Every conversation of the demo organization by state (all pages)."""
    states: Counter[str] = Counter()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = _ok(http, "GET", f"/v1/orgs/{setup.org_id}/transactions", setup.owner_token, params=params)
        states.update(t["state"] for t in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return states


def run_demo(options: DemoOptions, out: Console, err: Console) -> Counter[str]:
    """Run until Ctrl-C or `options.duration_s`; returns the conversations by state at the end."""
    with tempfile.TemporaryDirectory(prefix="wa-router-demo-") as tmp:
        data = Path(tmp)
        state = SimulatorState(pair_interval_s=1.0)
        # Meta reports each reply as sent, delivered and read a little later: the desk's ticks climb.
        state.default_delivery = DeliveryPlan(enabled=True, sent_delay_s=0.5, delivered_delay_s=1.5, read_delay_s=4.0)
        seeded = seed_demo(state, numbers=len(MODES))
        state.set_review_plan(seeded["waba_id"], ReviewPlan(enabled=True, delay_s=options.review_delay_s))
        admin_token = secrets.token_urlsafe(32)  # as strong as the gateway requires (43 characters)
        simulator = BackgroundServer(create_simulator_app(state), port=options.simulator_port)
        settings = Settings(database_url=f"sqlite+aiosqlite:///{data / 'wa_router.db'}",
                            secret_key_file=data / "secret.key", admin_token=admin_token, port=options.port,
                            graph_url=f"http://127.0.0.1:{options.simulator_port}/v25.0",
                            ray_namespace="wa-router-demo")
        gateway_app = create_app(settings)
        gateway = BackgroundServer(gateway_app, port=options.port, startup_timeout_s=300)
        with err.status("starting the Meta simulator ..."):
            simulator.start()
        try:
            with err.status("starting Ray and the gateway (first start takes a while) ..."):
                gateway.start()
            record_cluster(gateway_app)
            with httpx.Client(base_url=gateway.url, timeout=30) as http, \
                    httpx.Client(base_url=simulator.url, timeout=30) as sim:
                with err.status("creating the sample organization, inboxes and agents ..."):
                    setup = set_up(http, sim, admin_token, seeded, gateway.url)
                _print_welcome(out, gateway.url, simulator.url, gateway_app.state.dashboard_url, admin_token, setup)
                simulation = Simulation(http, sim, setup, options)
                simulation.start()
                try:
                    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s
                    while deadline is None or time.monotonic() < deadline:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    err.print("stopping the demo ...")
                simulation.join()
                states = conversation_states(http, setup)
                handled = states["assigned"] + states["closed"]
                out.print(f"demo summary: {sum(states.values())} conversations, {handled} handled by an agent "
                          f"({states['closed']} closed), {states['queued'] + states['offered']} waiting; "
                          f"{simulation.counts['replies']} replies, {simulation.counts['declined']} declined")
                return states
        finally:
            with err.status("stopping the gateway, Ray and the simulator ..."):
                gateway.stop()
                simulator.stop()
                remove_record(settings.cluster_record_file, os.getpid())


def _print_welcome(out: Console, gateway_url: str, simulator_url: str, dashboard: str | None, admin_token: str,
                   setup: DemoSetup) -> None:
    out.print("")
    out.print("[bold]wa-router demo is running[/bold]  (Ctrl-C stops everything)")
    out.print(f"  supervisor console: {gateway_url}/#token={setup.owner_token}")
    out.print(f"  agent console:      {gateway_url}/#token={setup.console_agent_token}   (agent 'You')")
    out.print(f"  API docs:           {gateway_url}/docs   (admin token {admin_token})")
    out.print(f"  Ray address:        {ray_address() or 'unknown'}   (namespace wa-router-demo)")
    out.print(f"  Ray dashboard:      {dashboard or 'not available'}")
    out.print(f"  Meta simulator:     {simulator_url}   (WABA {setup.waba_id})")
    modes = ", ".join(f"{mode} (inbox {inbox})" for mode, inbox in setup.inboxes.items())
    out.print(f"  inboxes:            {modes}")
    out.print(f"  agents:             {', '.join(AGENTS)} (simulated) and You; customers write every few seconds")
