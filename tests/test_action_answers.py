"""An agent's action is answered with the conversation as the inbox's step left it (not read again): what a
read of it shows right after, unless routing has moved it on since (a declined offer goes straight on)."""

from __future__ import annotations

from typing import Any

from tests.routing_support import Scenario, customer_id

_DETAIL_ONLY = ("messages", "window_expires_at")


def _read(sc: Scenario, tx_id: int) -> dict[str, Any]:
    return {k: v for k, v in sc.tx(tx_id).items() if k not in _DETAIL_ONLY}


def test_accept_decline_and_close_answer_the_conversation_as_their_step_left_it(sc: Scenario) -> None:
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b])
    with sc.socket(a) as sock_a, sc.socket(b) as sock_b:
        sc.send(customer_id(), "hello")
        offer = sock_a.next("offer")
        tx_id = offer["transaction_id"]
        declined = sc.do(tx_id, "decline", a)
        # Back in the queue when the step ended (the next offer, to b, is the routing pass after it).
        assert (declined["state"], declined["offered_to"], declined["agent_id"]) == ("queued", None, None)
        assert sock_b.next("offer")["transaction_id"] == tx_id
        accepted = sc.do(tx_id, "accept", b)
        assert (accepted["state"], accepted["agent_id"], accepted["inbox_id"]) == ("assigned", b.id, inbox)
        assert accepted == _read(sc, tx_id)
        assert sc.do(tx_id, "accept", b) == accepted  # a repeated accept answers as the first did
        closed = sc.do(tx_id, "close", b)
        assert closed["state"] == "closed" and closed["closed_at"] is not None
        assert closed == _read(sc, tx_id)
