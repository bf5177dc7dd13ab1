"""Helpers for the messaging suites: customers writing through the simulator, agents replying over HTTP.

Customers write through the simulator's `/_sim/inbound` (so Meta's side opens the 24-hour window
exactly as the gateway sees it), and the simulator posts its signed webhooks (messages, delivery
statuses, template reviews) to the organization's real webhook endpoint.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.routing_support import Agent, AgentSocket, Scenario
from tests.support import eventually


def connect_callback(sc: Scenario) -> None:
    """Meta's app callback for the org's WABA points at the org's webhook endpoint."""
    sc.gateway.simulator.set_callback_url(sc.org.waba_id, f"{sc.gateway.url}/webhooks/whatsapp/{sc.org.id}")


def sim(sc: Scenario, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{sc.gateway.simulator_url}/_sim{path}", timeout=30, **kwargs)
    assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


def customer_writes(sc: Scenario, customer: str, text: str = "hello", number: int = 0, age_s: float = 0.0,
                    **extra: Any) -> str:
    """The customer writes to the number through Meta (the simulator); returns the inbound wamid."""
    result = sim(sc, "POST", "/inbound", json={"phone_number_id": sc.org.numbers[number], "from": customer,
                                               "name": "Customer", "type": "text", "fields": {"body": text},
                                               "age_s": age_s, **extra})
    assert result["delivered"], result
    return str(result["message_id"])


def deliveries(sc: Scenario, number: int = 0, **plan: Any) -> None:
    """Automatic sent/delivered/read webhooks for every message the number sends."""
    sim(sc, "PUT", f"/numbers/{sc.org.numbers[number]}/delivery", json={"enabled": True, **plan})


def inject(sc: Scenario, *failures: dict[str, Any], number: int = 0) -> None:
    sim(sc, "POST", f"/numbers/{sc.org.numbers[number]}/failures", json={"failures": list(failures)})


def sent_to(sc: Scenario, customer: str, number: int = 0) -> list[dict[str, Any]]:
    """What Meta received for the customer from the number, in order."""
    data: list[dict[str, Any]] = sim(sc, "GET", "/sent_messages",
                                     params={"phone_number_id": sc.org.numbers[number], "to": customer})["data"]
    return data


def converse(sc: Scenario, agent: Agent, socket: AgentSocket, customer: str, text: str = "hello",
             number: int = 0) -> int:
    """The customer writes, the agent gets the offer and accepts: the assigned transaction's id."""
    customer_writes(sc, customer, text, number)
    tx_id = int(socket.next("offer", where=lambda e: True)["transaction_id"])
    sc.do(tx_id, "accept", agent)
    return tx_id


def reply(sc: Scenario, agent: Agent, tx_id: int, text: str, expected: int = 202, **extra: Any) -> Any:
    return sc.gateway.ok("POST", sc.org.path(f"/transactions/{tx_id}/messages"), agent.token, expected,
                         json={"type": "text", "text": text, **extra})


def outbound(sc: Scenario, tx_id: int) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = sc.gateway.items(sc.org.path(f"/transactions/{tx_id}/outbound"), sc.owner)
    return result


def wait_states(sc: Scenario, tx_id: int, states: set[str], count: int | None = None,
                timeout: float = 30.0) -> list[dict[str, Any]]:
    """The transaction's outbound messages once every one is in one of `states`."""
    def check() -> list[dict[str, Any]] | None:
        rows = outbound(sc, tx_id)
        if (count is None or len(rows) == count) and rows and all(r["state"] in states for r in rows):
            return rows
        return None

    found: list[dict[str, Any]] = eventually(check, timeout=timeout, interval=0.1,
                                             what=f"outbound of tx {tx_id} in {states}")
    return found


def approved_template(sc: Scenario, name: str, body: str, languages: tuple[str, ...] = ("en_US",)) -> None:
    """A template created through the API and approved by Meta's (simulated) review webhook."""
    sim(sc, "PUT", f"/wabas/{sc.org.waba_id}/review", json={"enabled": True, "delay_s": 0.05, "status": "APPROVED"})
    path = sc.org.path(f"/whatsapp/accounts/{sc.org.waba_id}/templates")
    sc.gateway.ok("POST", path, sc.owner, 201, json={"name": name, "category": "UTILITY",
                                                     "languages": list(languages), "body": body})

    def approved() -> bool:
        listed = sc.gateway.items(path, sc.owner)
        return any(t["name"] == name and all(lang["status"] == "APPROVED" for lang in t["languages"])
                   for t in listed)

    eventually(approved, what=f"template {name} approved")
