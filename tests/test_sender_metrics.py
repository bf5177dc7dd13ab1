"""What an operator sees of a number's sender on the Ray node's export (`actors/sender_metrics.py`): agents'
replies sent through the Meta simulator, failed by Meta's error code, retried, and the outbox waiting."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from actors.sender_metrics import error_code
from meta.graph_client import GraphAPIError
from tests.messaging_support import connect_callback, converse, inject, reply, wait_states
from tests.metrics_support import Samples, exported, figure, settled
from tests.routing_support import Agent, Scenario, customer_id
from tests.support import eventually

SENDER = "ray_wa_router_sender_"


def _conversation(sc: Scenario) -> tuple[Agent, int]:
    """An agent holding a conversation with a customer who wrote through Meta: its replies may go out."""
    connect_callback(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    return agent, converse(sc, agent, sc.socket(agent), customer_id())


def _figures(number: str) -> Callable[[Samples], dict[str, float]]:
    def read(samples: Samples) -> dict[str, float]:
        return {
            "sent": figure(samples, f"{SENDER}messages_sent_total", phone_number_id=number),
            "failed": figure(samples, f"{SENDER}messages_failed_total", phone_number_id=number),
            "failed 131026": figure(samples, f"{SENDER}messages_failed_total", phone_number_id=number, code="131026"),
            "retries": figure(samples, f"{SENDER}retries_total", phone_number_id=number),
            "retries 2": figure(samples, f"{SENDER}retries_total", phone_number_id=number, code="2"),
            "retries transport": figure(samples, f"{SENDER}retries_total", phone_number_id=number,
                                        code="transport"),
            "waiting": figure(samples, f"{SENDER}queue_depth", phone_number_id=number),
        }

    return read


def test_replies_sent_retried_and_failed_show_by_metas_error_code_and_the_outbox_waiting(sc: Scenario) -> None:
    agent, tx_id = _conversation(sc)
    figures = _figures(sc.org.numbers[0])
    # Meta accepts but answers after the sender's timeout (2 s): each reply waits in the outbox meanwhile, then is
    # retried with the same key (a transport failure: Meta never answered in time) and sent once. Three such
    # replies keep the outbox waiting for over 6 s, so that even a loaded machine's export shows it.
    inject(sc, *[{"delay_s": 3.0}] * 3)
    for text in ("slowly", "slowly again", "slowly once more"):
        reply(sc, agent, tx_id, text)
    eventually(lambda: figures(exported(sc.org.id))["waiting"] in (1, 2, 3), timeout=20, interval=0.2,
               what="the replies waiting in the outbox on the export")
    wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"}, count=3)
    # A 503 (Meta's code 2, transient): one retry, then sent.
    inject(sc, {"http_status": 503, "code": 2})
    reply(sc, agent, tx_id, "after one retry")
    wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"}, count=4)
    # Undeliverable (131026, permanent): failed at once.
    inject(sc, {"http_status": 400, "code": 131026, "message": "Message undeliverable"})
    reply(sc, agent, tx_id, "into the void")
    rows = wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read", "failed"}, count=5)
    assert [row["state"] == "failed" for row in rows].count(True) == 1
    settled(sc.org.id, figures, {"sent": 4, "retries": 4, "retries transport": 3, "retries 2": 1, "failed": 1,
                                 "failed 131026": 1, "waiting": 0})


def test_a_failure_without_metas_code_is_transport_when_meta_was_never_heard() -> None:
    unreachable = GraphAPIError(502, "Graph API unreachable")
    unreachable.__cause__ = httpx.ConnectError("refused")
    assert error_code(unreachable) == "transport"
    assert error_code(GraphAPIError(502, "Graph API returned HTTP 502 without a Graph error body")) == "none"
    assert error_code(GraphAPIError(400, "Message undeliverable", code=131026)) == "131026"
