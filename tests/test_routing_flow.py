"""End-to-end routing flow: offers, answers, timers, presence, transfers, the event stream and the audit trail.

Real gateway (HTTP + WebSocket), real Ray actors, real SQLite store, signed webhooks from the simulator.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import ray
from websockets.exceptions import InvalidStatus

from tests.routing_support import AgentSocket, Scenario, customer_id, org_actor_names
from tests.support import eventually, query_db


def test_offer_accept_stream_close_with_actor_names_audit_and_store(any_sc: Scenario) -> None:
    sc = any_sc
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b])
    sock = sc.socket(a)
    assert sock.hello["agent"]["user_id"] == a.id and sock.hello["agent"]["status"] == "available"
    customer = customer_id()
    sc.send(customer, "I need help")

    offer = sock.next("offer")
    tx_id = offer["transaction_id"]
    assert offer["inbox_id"] == inbox
    assert offer["customer"]["wa_id"] == customer
    assert offer["first_message"]["summary"] == "I need help"
    assert datetime.fromisoformat(offer["expires_at"]) > datetime.fromisoformat(offer["at"])
    assert isinstance(offer["id"], int)
    view = sc.agent_view(a)
    assert view["pending_offer"] == {"transaction_id": tx_id, "inbox_id": inbox, "expires_at": offer["expires_at"]}
    queue = sc.queue(inbox, a.token)
    assert [(q["id"], q["state"], q["offered_to"], q["first_message"]) for q in queue] == \
        [(tx_id, "offered", a.id, "I need help")]

    # One actor per inbox and per active agent, named as the issue says, in the gateway's namespace.
    names = org_actor_names(sc.gateway, sc.org.id)
    assert {f"inbox:{sc.org.id}:{inbox}", f"agent:{sc.org.id}:{a.id}", f"agent:{sc.org.id}:{b.id}"} <= names

    accepted = sc.do(tx_id, "accept", a)
    assert accepted["state"] == "assigned" and accepted["agent_id"] == a.id
    assigned = sock.next("assigned")
    assert assigned["transaction_id"] == tx_id
    assert sc.queue(inbox) == []

    sc.send(customer, "are you there?")
    message = sock.next("message")
    assert message["transaction_id"] == tx_id and message["message"]["summary"] == "are you there?"
    detail = sc.tx(tx_id)
    assert [m["summary"] for m in detail["messages"]] == ["I need help", "are you there?"]
    view = sc.agent_view(a)
    assert view["active_transactions"] == [tx_id] and view["pending_offer"] is None and view["idle_since"] is None

    closed = sc.do(tx_id, "close", a)
    assert closed["state"] == "closed" and closed["closed_at"] is not None
    assert sock.next("transaction_closed")["transaction_id"] == tx_id
    view = sc.agent_view(a)
    assert view["active_transactions"] == [] and view["idle_since"] is not None

    trail = sc.trail(tx_id)
    assert [(e["kind"], e["agent_id"]) for e in trail] == [
        ("queued", None), ("offered", a.id), ("accepted", a.id), ("closed", a.id)]
    assert all(e["at"] for e in trail)
    # Event ids on the stream only grow.
    ids = [e["id"] for e in sock.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [t["id"] for t in sc.transactions(inbox_id=inbox, state="closed", agent_id=a.id)] == [tx_id]
    assert sc.transactions(inbox_id=inbox, state="assigned") == []

    # Every transition is in the store.
    gw = sc.gateway
    assert query_db(gw, "SELECT state, agent_id FROM transactions WHERE id = :id", id=tx_id) == [("closed", a.id)]
    assert query_db(gw, "SELECT status, last_chat_end_at IS NOT NULL FROM agent_states WHERE user_id = :u",
                    u=a.id) == [("available", True)]
    assert query_db(gw, "SELECT s.user_id FROM sticky_agents s JOIN customers c ON c.id = s.customer_id "
                    "WHERE s.inbox_id = :i AND c.wa_id = :c",
                    i=inbox, c=customer) == [(a.id,)]
    kinds = [k for (k,) in query_db(gw, "SELECT kind FROM agent_events WHERE user_id = :u ORDER BY id", u=a.id)]
    assert [k for k in kinds if k != "status"] == ["offer", "assigned", "message", "transaction_closed"]


def test_decline_offers_next_agent_and_rescinds(sc: Scenario) -> None:
    a, b, c = sc.agents(3)
    inbox = sc.inbox([a, b, c])
    socks = {ag.id: sc.socket(ag) for ag in (a, b, c)}
    sc.send(customer_id())
    tx_id = socks[a.id].next("offer")["transaction_id"]

    declined = sc.do(tx_id, "decline", a)
    assert declined["state"] in ("queued", "offered")
    assert socks[a.id].next("offer_rescinded")["transaction_id"] == tx_id
    assert socks[b.id].next("offer")["transaction_id"] == tx_id
    # The declining agent may no longer accept; an agent without the offer is refused.
    assert sc.act(tx_id, "accept", a).status_code == 409
    assert sc.act(tx_id, "accept", c).status_code == 403
    assert sc.act(tx_id, "decline", c).status_code == 403
    sc.do(tx_id, "decline", b)
    assert socks[c.id].next("offer")["transaction_id"] == tx_id
    sc.do(tx_id, "accept", c)
    assert sc.kinds(tx_id) == [("queued", None), ("offered", a.id), ("declined", a.id), ("offered", b.id),
                               ("declined", b.id), ("offered", c.id), ("accepted", c.id)]
    assert sc.tx(tx_id)["agent_id"] == c.id
    assert inbox == sc.tx(tx_id)["inbox_id"]


def test_when_everyone_declined_a_new_round_starts_at_once(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    sc.inbox([a])
    sock = sc.socket(a)
    sc.send(customer_id(), "anyone?")
    first = sock.next("offer")
    tx_id = first["transaction_id"]
    sc.do(tx_id, "decline", a)
    assert sock.next("offer_rescinded")["offer_id"] == first["offer_id"]
    # The only agent passed: a new round starts at once (a new offer id), no other event needed.
    again = sock.next("offer")
    assert again["transaction_id"] == tx_id and again["offer_id"] != first["offer_id"]
    trail = sc.trail(tx_id)
    assert [(e["kind"], e["agent_id"]) for e in trail] == [("queued", None), ("offered", a.id), ("declined", a.id),
                                                           ("offered", a.id)]
    assert trail[-1]["detail"]["new_round"] is True
    sc.do(tx_id, "accept", a)
    assert sc.kinds(tx_id)[-1] == ("accepted", a.id)


def test_timer_rescinds_offer_and_late_accept_is_409(sc: Scenario) -> None:
    a, b = sc.agents(2)
    sc.inbox([a, b], reassign_after_s=1)
    sock_a, sock_b = sc.socket(a), sc.socket(b)
    sc.send(customer_id())
    offer = sock_a.next("offer")
    tx_id = offer["transaction_id"]
    rescinded = sock_a.next("offer_rescinded")
    assert rescinded["transaction_id"] == tx_id and rescinded["reason"] == "missed"
    assert sock_b.next("offer")["transaction_id"] == tx_id
    late = sc.act(tx_id, "accept", a)
    assert late.status_code == 409, late.text
    sc.do(tx_id, "accept", b)
    assert sc.kinds(tx_id) == [("queued", None), ("offered", a.id), ("missed", a.id), ("offered", b.id),
                               ("accepted", b.id)]
    assert sc.agent_view(a)["pending_offer"] is None
    assert sc.agent_view(b)["active_transactions"] == [tx_id]


def test_going_away_mid_offer_rescinds_at_once_and_keeps_active_chats(sc: Scenario) -> None:
    a, b = sc.agents(2, max_concurrent=2)
    sc.inbox([a, b])
    sock_a, sock_b = sc.socket(a), sc.socket(b)
    first = customer_id()
    sc.send(first)
    tx1 = sock_a.next("offer")["transaction_id"]
    sc.do(tx1, "accept", a)
    # The next customer goes to b (rotation); b accepts, so a is next in line.
    sc.send(customer_id())
    tx2 = sock_b.next("offer")["transaction_id"]
    sc.do(tx2, "accept", b)
    sc.send(customer_id())
    tx3 = sock_a.next("offer")["transaction_id"]

    view = sc.status(a, "away")  # the agent itself goes away while the offer rings
    assert view["status"] == "away" and view["pending_offer"] is None
    assert view["active_transactions"] == [tx1]
    rescinded = sock_a.next("offer_rescinded")
    assert rescinded["transaction_id"] == tx3
    assert sock_b.next("offer")["transaction_id"] == tx3
    assert ("rescinded", a.id) in sc.kinds(tx3) and ("missed", a.id) not in sc.kinds(tx3)
    assert sc.act(tx3, "accept", a).status_code == 409
    sc.do(tx3, "accept", b)

    # Active chats stay with the away agent, and messages still reach it.
    sc.send(first, "still there?")
    assert sock_a.next("message")["transaction_id"] == tx1
    assert sc.agent_view(a)["active_transactions"] == [tx1]
    # A supervisor sets presence for an agent; another agent may not.
    assert sc.gateway.call("PUT", sc.org.path(f"/agents/{a.id}/status"), b.token,
                           json={"status": "offline"}).status_code == 403
    assert sc.status(a, "offline", token=sc.owner)["status"] == "offline"


def test_no_eligible_agent_queues_fifo_then_offers_when_one_becomes_available(sc: Scenario) -> None:
    a, b = sc.agents(2, available=False)
    outsider = sc.agent()
    inbox = sc.inbox([a, b])
    customers = [customer_id() for _ in range(3)]
    for index, customer in enumerate(customers):
        sc.send(customer, f"question {index}")
        sc.tx_of(customer)  # keep the arrival order deterministic
    queue = sc.queue(inbox, a.token)
    assert [q["customer"]["wa_id"] for q in queue] == customers
    assert [q["first_message"] for q in queue] == ["question 0", "question 1", "question 2"]
    assert all(q["state"] == "queued" and q["offered_to"] is None for q in queue)
    stamps = [q["waiting_since"] for q in queue]
    assert stamps == sorted(stamps)
    assert sc.gateway.call("GET", sc.org.path(f"/inboxes/{inbox}/queue"), outsider.token).status_code == 403

    sock_b = sc.socket(b)
    sc.status(b, "available")
    offer = sock_b.next("offer")
    assert offer["transaction_id"] == queue[0]["id"]  # oldest first
    sc.do(offer["transaction_id"], "accept", b)
    sc.do(offer["transaction_id"], "close", b)
    assert sock_b.next("offer")["transaction_id"] == queue[1]["id"]


def test_supervisor_transfer_to_agent_and_to_queue(sc: Scenario) -> None:
    a, b, c = sc.agents(3)
    inbox = sc.inbox([a, b, c])
    socks = {ag.id: sc.socket(ag) for ag in (a, b, c)}
    customer = customer_id()
    sc.send(customer)
    tx_id = socks[a.id].next("offer")["transaction_id"]
    sc.do(tx_id, "accept", a)

    assert sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/transfer"), a.token,
                           json={"user_id": b.id}).status_code == 403
    moved = sc.gateway.ok("POST", sc.org.path(f"/transactions/{tx_id}/transfer"), sc.owner, json={"user_id": b.id})
    assert moved["state"] == "assigned" and moved["agent_id"] == b.id
    away = socks[a.id].next("transferred")
    assert away["transaction_id"] == tx_id
    incoming = socks[b.id].next("transferred")
    assert incoming["transaction_id"] == tx_id and incoming["customer"]["wa_id"] == customer
    assert sc.agent_view(a)["active_transactions"] == []
    assert sc.agent_view(b)["active_transactions"] == [tx_id]
    sc.send(customer, "after transfer")
    assert socks[b.id].next("message")["message"]["summary"] == "after transfer"

    requeued = sc.gateway.ok("POST", sc.org.path(f"/transactions/{tx_id}/transfer"), sc.owner,
                             json={"to_queue": True})
    assert requeued["agent_id"] is None
    socks[b.id].next("transferred")
    # Back in the queue it is routed again, not to the agent it was taken from.
    offer = socks[c.id].next("offer")
    assert offer["transaction_id"] == tx_id
    sc.do(tx_id, "accept", c)
    kinds = [k for k, _ in sc.kinds(tx_id)]
    assert kinds == ["queued", "offered", "accepted", "transferred", "transferred", "offered", "accepted"]
    assert sc.tx(tx_id)["inbox_id"] == inbox


def test_authorization_of_actions_views_and_stream(sc: Scenario) -> None:
    a, b = sc.agents(2)
    supervisor, supervisor_token = sc.org.add_user("admin")
    sc.inbox([a, b])
    sock = sc.socket(a)
    sc.send(customer_id())
    tx_id = sock.next("offer")["transaction_id"]
    owner = sc.owner

    # Only the agent holding the offer may answer it; the owner is no agent of it either.
    assert sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/accept"), owner).status_code == 403
    assert sc.act(tx_id, "accept", b).status_code == 403
    assert sc.act(tx_id, "close", b).status_code == 403
    sc.do(tx_id, "accept", a)
    assert sc.act(tx_id, "close", b).status_code == 403
    # A repeated accept (a client retrying after a lost answer) answers as the first did.
    assert sc.do(tx_id, "accept", a)["agent_id"] == a.id

    # Agent views: self and supervisors only; settings: supervisors only.
    assert sc.gateway.call("GET", sc.org.path(f"/agents/{a.id}"), b.token).status_code == 403
    assert sc.gateway.ok("GET", sc.org.path(f"/agents/{a.id}"), a.token)["user_id"] == a.id
    assert sc.gateway.ok("GET", sc.org.path(f"/agents/{a.id}"), supervisor_token)["active_transactions"] == [tx_id]
    assert sc.gateway.call("PATCH", sc.org.path(f"/agents/{a.id}"), a.token,
                           json={"max_concurrent": 5}).status_code == 403
    assert sc.gateway.ok("PATCH", sc.org.path(f"/agents/{a.id}"), supervisor_token,
                         json={"max_concurrent": 5})["max_concurrent"] == 5
    assert sc.gateway.call("PATCH", sc.org.path(f"/agents/{a.id}"), owner,
                           json={"max_concurrent": 51}).status_code == 422

    # The stream: another agent is refused, a supervisor is let in, subprotocol tokens work.
    with pytest.raises(InvalidStatus) as refused:
        AgentSocket(sc.gateway, sc.org, a.id, b.token)
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        AgentSocket(sc.gateway, sc.org, a.id, "not-a-token", subprotocol_token=True)
    with AgentSocket(sc.gateway, sc.org, a.id, supervisor_token) as watched:
        assert watched.hello["agent"]["active_transactions"] == [tx_id]
    with AgentSocket(sc.gateway, sc.org, a.id, a.token, subprotocol_token=True) as own:
        assert own.hello["agent"]["user_id"] == a.id
        assert own.subprotocol == "wa-router.events"
    assert supervisor != a.id


def test_stream_cursor_replays_missed_events(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    sc.inbox([a])
    customer = customer_id()
    with sc.socket(a) as first:
        sc.send(customer, "one")
        tx_id = first.next("offer")["transaction_id"]
        sc.do(tx_id, "accept", a)
        first.next("assigned")
        seen = first.last_id()
    # While disconnected: two messages and the close.
    sc.send(customer, "two")
    sc.send(customer, "three")
    eventually(lambda: len(sc.tx(tx_id)["messages"]) == 3, what="messages stored")
    sc.do(tx_id, "close", a)

    replay = sc.socket(a, cursor=seen, subprotocol_token=True)
    assert replay.hello["cursor"] > seen
    first_msg = replay.next("message")
    second_msg = replay.next("message")
    closed = replay.next("transaction_closed")
    assert [first_msg["message"]["summary"], second_msg["message"]["summary"]] == ["two", "three"]
    assert seen < first_msg["id"] < second_msg["id"] < closed["id"]
    assert all(e["id"] > seen for e in replay.events)
    assert closed["id"] <= replay.hello["cursor"]
    # Live events keep flowing on the replaying connection.
    sc.send(customer_id(), "new customer")
    assert replay.next("offer")["first_message"]["summary"] == "new customer"


def test_close_requeues_nothing_and_frees_capacity_for_the_queue(sc: Scenario) -> None:
    a, _inbox, sock, tx1, tx2 = sc.busy_agent_and_waiting_customer()
    assert sc.tx(tx2)["state"] == "queued"  # a is at capacity (1)
    sc.do(tx1, "close", a)
    assert sock.next("offer")["transaction_id"] == tx2  # closing a chat makes a eligible again
    assert sc.act(tx1, "close", a).status_code == 409


def test_a_failing_inbox_does_not_hold_up_other_inboxes(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    broken = sc.inbox([a], number=0)
    healthy = sc.inbox([a], number=1)
    sc.edit_inbox(healthy, name="Healthy")  # activates its actor now, not on the first message
    sock = sc.socket(a)
    # The first inbox's actor is gone for good: the gateway keeps retrying its message for seconds.
    sc.edit_inbox(broken, name="Broken")
    ray.kill(ray.get_actor(f"inbox:{sc.org.id}:{broken}", namespace=sc.gateway.namespace), no_restart=True)
    sc.send(customer_id(), "to the broken inbox", number=0)
    sc.send(customer_id(), "to the healthy inbox", number=1)
    # Routing for every other inbox goes on meanwhile (before, it waited for those retries to end, about 15 s).
    offer = sock.next("offer", timeout=8)
    assert offer["inbox_id"] == healthy and offer["first_message"]["summary"] == "to the healthy inbox"
    assert [t["inbox_id"] for t in sc.transactions()] == [healthy]


def test_revoking_the_whatsapp_licence_mid_offer_rescinds_it_and_reroutes(sc: Scenario) -> None:
    first, second = sc.agents(2)
    inbox = sc.inbox([first, second], reassign_after_s=60)
    customer = customer_id()
    with sc.socket(first) as socket:
        sc.send(customer, "who will answer?")
        tx_id = socket.next("offer")["transaction_id"]
        sc.gateway.ok("PATCH", sc.org.path(f"/users/{first.id}"), sc.owner, json={"licenses": ["phone_system"]})
        assert socket.next("offer_rescinded")["transaction_id"] == tx_id
    sc.wait_state(tx_id, "offered", offered_to=second.id)
    assert ("rescinded", first.id) in sc.kinds(tx_id)
    agents = sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}"), sc.owner)["agents"]
    assert [a["user_id"] for a in agents] == [second.id]
    # The former agent can no longer act on it.
    assert sc.act(tx_id, "accept", first).status_code in (403, 409)
