"""An agent's accept and close read no conversation: the gateway knows its inbox from the offer it relayed to
the agent's workspace (or from its own earlier read), and answers with the conversation as the inbox's step left
it. A member who does not serve the inbox is still refused as the reads refuse them, learning nothing of the
conversation's state.

The gateway runs in this process: its statements are seen through SQLAlchemy's engine events.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from gateway.conversation_places import ConversationPlaces
from tests.routing_support import Scenario, customer_id

# The action's read of the conversation (`session.get(Transaction, id)`), whatever the dialect's placeholder.
_READ_OF_A_TRANSACTION = re.compile(r"FROM transactions\s+WHERE transactions\.id = ", re.IGNORECASE)


@contextmanager
def _transaction_reads() -> Iterator[list[str]]:
    """The reads of one transaction by id that this process runs inside the block."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if _READ_OF_A_TRANSACTION.search(statement):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def _as_read(sc: Scenario, tx_id: int) -> dict[str, Any]:
    shown = sc.tx(tx_id)
    return {key: shown[key] for key in ("id", "org_id", "inbox_id", "customer", "state", "agent_id", "offered_to",
                                        "offer_expires_at", "waiting_since", "assigned_at", "closed_at",
                                        "created_at")}


def test_an_accept_after_a_relayed_offer_and_the_close_read_no_conversation(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    with sc.socket(agent) as socket:
        sc.send(customer_id(), "where is my order?")
        offer = socket.next("offer")
        tx_id = offer["transaction_id"]
        with _transaction_reads() as reads:
            accepted = sc.do(tx_id, "accept", agent)
            closed = sc.do(tx_id, "close", agent)
        assert reads == []
    # Each answer is the conversation as a read shows it right after.
    assert accepted["state"] == "assigned" and accepted["agent_id"] == agent.id
    assert closed == _as_read(sc, tx_id)
    assert {k: v for k, v in accepted.items() if k not in ("state", "closed_at")} == \
        {k: v for k, v in closed.items() if k not in ("state", "closed_at")}
    assert accepted["customer"]["wa_id"] is not None


def test_an_action_on_a_conversation_this_gateway_never_saw_reads_it_once(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    customer = customer_id()
    sc.send(customer, "no workspace open")
    tx_id = sc.tx_of(customer)["id"]
    sc.wait_state(tx_id, "offered", offered_to=agent.id)
    with _transaction_reads() as reads:
        sc.do(tx_id, "accept", agent)
        first = len(reads)
        sc.do(tx_id, "close", agent)
    assert (first, len(reads)) == (1, 1)


def test_a_member_of_another_inbox_is_refused_as_the_reads_refuse_them(sc: Scenario) -> None:
    agent, outsider = sc.agents(2)
    sc.inbox([agent])
    sc.inbox([outsider], number=1)
    with sc.socket(agent) as socket:
        sc.send(customer_id(), "hello")
        tx_id = socket.next("offer")["transaction_id"]
        sc.do(tx_id, "accept", agent)
    # The gateway knows the conversation's inbox: the outsider's action still gets the reads' refusal (not the
    # inbox's "not offered to you", nor a 409 telling the conversation is taken or closed).
    expected = sc.gateway.call("GET", sc.org.path(f"/transactions/{tx_id}"), outsider.token)
    assert expected.status_code == 403
    for action in ("accept", "decline", "claim", "close"):
        refused = sc.act(tx_id, action, outsider)
        assert (refused.status_code, refused.json()) == (403, expected.json()), action
    sc.do(tx_id, "close", agent)
    refused = sc.act(tx_id, "close", outsider)
    assert (refused.status_code, refused.json()) == (403, expected.json())


def test_the_places_kept_are_bounded_and_never_cross_organizations() -> None:
    places = ConversationPlaces(max_entries=2)
    places.learn_from_event(1, {"type": "offer", "transaction_id": 10, "inbox_id": 3})
    places.learn_from_event(1, {"type": "status", "message_id": 5})  # names no conversation's place
    places.learn(1, 11, 4)
    assert (places.inbox_of(1, 10), places.inbox_of(1, 11)) == (3, 4)
    assert places.inbox_of(2, 10) is None  # another organization's caller: read (and refused) as before
    places.learn(1, 12, 4)  # past the bound the least recently learnt goes
    assert (places.inbox_of(1, 10), places.inbox_of(1, 12)) == (None, 4)
