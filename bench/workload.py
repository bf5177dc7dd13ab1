"""The standard workload: its setup through the public HTTP API, and the schedule of signed webhooks.

Setup is what a supervisor does (as `tests/support.py` does): an organization, its WABA linked through
the Graph API (the simulator), agents with `max_concurrent`, inboxes across the automatic modes, and
agents going available. The schedule is deterministic, so the orchestrator knows every wamid the
generator posts and can check each one against the store and the agents' streams.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from meta.signature import HEADER, sign
from meta.simulator import payloads
from meta.simulator.webhook_sender import USER_AGENT, encode

AUTOMATIC_MODES = ("round_robin", "proficiency", "sticky", "longest_idle")


@dataclass(frozen=True)
class WorkloadShape:
    """Every part of the standard workload is a flag of `wa-router bench`."""

    inboxes: int = 10
    agents: int = 50
    inboxes_per_agent: int = 2
    max_concurrent: int = 5
    customers: int = 2000
    followups: int = 4
    followup_gap_s: float = 1.0
    accept_delay_s: float = 0.05
    timer_inbox: bool = True  # inbox 0: 1-second reassignment and an agent who never answers


@dataclass
class AgentSpec:
    id: int
    token: str
    inboxes: list[int]
    silent: bool = False


@dataclass
class Plan:
    """What the agents' and the generator's processes need to know about the set-up organization."""

    gateway_url: str
    org_id: int
    owner_token: str
    waba_id: str
    app_secret: str
    numbers: list[tuple[str, str]]  # (phone_number_id, display number), one per inbox
    inbox_ids: list[int]
    inbox_modes: list[str]
    timer_inbox_id: int | None
    agents: list[AgentSpec] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        agents = [AgentSpec(**a) for a in data.pop("agents")]
        data["numbers"] = [tuple(n) for n in data["numbers"]]
        return cls(**data, agents=agents)


# ---------------------------------------------------------------------- set-up


def add_simulated_waba(simulator_url: str, numbers: int) -> dict[str, Any]:
    """A WABA with one number per inbox, created through the simulator's control API."""
    body = {"name": "Bench Business", "numbers": [
        {"display_phone_number": f"+1 555 01{i:05d}", "verified_name": f"Bench {i}"} for i in range(numbers)]}
    response = httpx.post(f"{simulator_url}/_sim/wabas", json=body, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def agent_inboxes(agent_index: int, shape: WorkloadShape) -> list[int]:
    """Inbox indexes of an agent: spread so that every inbox gets the same number of agents."""
    first = agent_index % shape.inboxes
    chosen = [first]
    step = 1 + agent_index // shape.inboxes
    while len(chosen) < min(shape.inboxes_per_agent, shape.inboxes):
        candidate = (chosen[-1] + step) % shape.inboxes
        while candidate in chosen:
            candidate = (candidate + 1) % shape.inboxes
        chosen.append(candidate)
    return chosen


def set_up(gateway_url: str, admin_token: str, simulator_url: str, shape: WorkloadShape) -> Plan:
    http = httpx.Client(base_url=gateway_url, timeout=120)

    def ok(method: str, path: str, token: str, expected: int = 200, **kwargs: Any) -> Any:
        response = http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if response.status_code != expected:
            raise RuntimeError(f"set-up {method} {path}: {response.status_code} {response.text}")
        return response.json()

    org = ok("POST", "/v1/orgs", admin_token, 201, json={
        "name": "Bench Contact Center", "owner": {"name": "Bench Owner", "email": "owner@bench.test"}})
    org_id, owner = org["id"], org["owner"]["token"]
    if shape.timer_inbox:
        # The silent agent must keep ringing: after 3 missed offers in a row the product would set it away
        # (the default), and the offer timers the workload means to exercise would stop after three.
        ok("PATCH", f"/v1/orgs/{org_id}", owner, json={"missed_offers_before_away": 0})
    waba = add_simulated_waba(simulator_url, shape.inboxes)
    ok("POST", f"/v1/orgs/{org_id}/whatsapp/accounts", owner, 201, json={
        "waba_id": waba["waba_id"], "access_token": waba["access_token"], "app_secret": waba["app_secret"]})

    agents: list[AgentSpec] = []
    for index in range(shape.agents + (1 if shape.timer_inbox else 0)):
        silent = index == shape.agents
        user = ok("POST", f"/v1/orgs/{org_id}/users", owner, 201, json={
            "name": f"{'Silent' if silent else 'Agent'} {index}", "email": f"agent{index}@bench.test",
            "role": "member", "licenses": ["phone_system", "contact_center_whatsapp"]})
        agents.append(AgentSpec(id=int(user["id"]), token=str(user["token"]),
                                inboxes=[0] if silent else agent_inboxes(index, shape), silent=silent))

    numbers = [(n["id"], n["display_phone_number"]) for n in waba["numbers"]]
    inbox_ids, modes = [], []
    for index in range(shape.inboxes):
        mode = AUTOMATIC_MODES[index % len(AUTOMATIC_MODES)]
        members = [a for a in agents if index in a.inboxes]
        timer = shape.timer_inbox and index == 0
        created = ok("POST", f"/v1/orgs/{org_id}/inboxes", owner, 201, json={
            "name": f"Bench inbox {index}", "phone_number_id": numbers[index][0], "assignment_mode": mode,
            "reassign_after_s": 1 if timer else 30,
            # Proficiency varies, so the proficiency mode has something to decide on.
            "agents": [{"user_id": a.id, "proficiency": 1 + (a.id * 7) % 100} for a in members]})
        inbox_ids.append(int(created["id"]))
        modes.append(mode)

    # Capacity and presence go to the agent actors (one activation each): in parallel.
    def go_online(agent: AgentSpec) -> None:
        ok("PATCH", f"/v1/orgs/{org_id}/agents/{agent.id}", owner, json={"max_concurrent": shape.max_concurrent})
        ok("PUT", f"/v1/orgs/{org_id}/agents/{agent.id}/status", agent.token, json={"status": "available"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(go_online, agents))
    http.close()
    return Plan(gateway_url=gateway_url, org_id=org_id, owner_token=owner, waba_id=waba["waba_id"],
                app_secret=waba["app_secret"], numbers=numbers, inbox_ids=inbox_ids, inbox_modes=modes,
                timer_inbox_id=inbox_ids[0] if shape.timer_inbox else None, agents=agents)


# ---------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class ScheduledMessage:
    offset_s: float
    wamid: str
    conversation: int
    index: int  # 1 = the opening message
    of: int
    customer: str
    inbox_index: int


def customer_wa_id(index: int) -> str:
    return f"4915{index:08d}"


def wamid_of(run: str, step: int, conversation: int, index: int, of: int) -> str:
    return f"wamid.bench.{run}.{step}.{conversation}.{index}of{of}"


def parse_wamid(wamid: str) -> tuple[int, int, int, int] | None:
    """(step, conversation, index, of) of a harness wamid; None for anything else."""
    parts = wamid.split(".")
    if len(parts) != 6 or parts[1] != "bench" or "of" not in parts[5]:
        return None
    index, of = parts[5].split("of")
    return int(parts[3]), int(parts[4]), int(index), int(of)


def build_schedule(workload: dict[str, Any]) -> list[ScheduledMessage]:
    """Conversations start evenly so that all their messages together make `rate` messages/s.

    Each conversation is an opening message and `followups` more, `followup_gap_s` apart; a step
    uses the next customers of the pool, so a returning customer (sticky mode) comes back later.
    """
    per_conversation = 1 + workload["followups"]
    conversations = max(1, round(workload["rate"] * workload["duration_s"] / per_conversation))
    interval = per_conversation / workload["rate"]
    messages = []
    for c in range(conversations):
        customer_index = (workload["customer_offset"] + c) % workload["customers"]
        inbox_index = customer_index % len(workload["numbers"])
        for k in range(per_conversation):
            messages.append(ScheduledMessage(
                offset_s=c * interval + k * workload["followup_gap_s"],
                wamid=wamid_of(workload["run"], workload["step"], c, k + 1, per_conversation),
                conversation=c, index=k + 1, of=per_conversation, customer=customer_wa_id(customer_index),
                inbox_index=inbox_index))
    messages.sort(key=lambda m: m.offset_s)
    return messages


def signed_request(host: str, port: int, path: str, workload: dict[str, Any], message: ScheduledMessage) -> bytes:
    """The raw HTTP/1.1 request Meta would send for this message, signed with the app secret."""
    phone_id, display = workload["numbers"][message.inbox_index]
    payload = payloads.inbound_message(
        workload["waba_id"], phone_id, display, message.customer, f"Customer {message.customer[-4:]}",
        type="text", body=f"bench message {message.index}/{message.of} ({secrets.token_hex(4)})",
        message_id=message.wamid)
    body = encode(payload)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"User-Agent: {USER_AGENT}\r\n{HEADER}: {sign(body, workload['app_secret'])}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body
