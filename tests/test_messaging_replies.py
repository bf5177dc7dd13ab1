"""Agents answer customers: replies through Meta (the simulator), the 24-hour window, delivery statuses."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
import ray

from gateway.outbound import conversation_order
from gateway.schemas import MessageOut
from tests.messaging_support import (
    approved_template,
    connect_callback,
    converse,
    customer_writes,
    deliveries,
    inject,
    outbound,
    reply,
    sent_to,
    sim,
    wait_states,
)
from tests.routing_support import Scenario, customer_id
from tests.support import eventually, query_db


def test_a_reply_inside_the_window_reaches_the_customer_in_order_with_statuses(any_sc: Scenario) -> None:
    sc = any_sc
    connect_callback(sc)
    deliveries(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    customer = customer_id()
    tx_id = converse(sc, agent, socket, customer, "where is my parcel?")
    quoted = sc.tx(tx_id)["messages"][0]["wamid"]

    accepted = reply(sc, agent, tx_id, "Let me check that for you", reply_to=quoted)
    assert accepted["state"] == "queued" and accepted["id"] > 0 and accepted["to_wa_id"] == customer

    # Meta got exactly that, quoting the customer's message; the delivery statuses came back.
    (rows,) = [wait_states(sc, tx_id, {"read"})]
    at_meta = sent_to(sc, customer)
    assert [m["payload"]["text"]["body"] for m in at_meta] == ["Let me check that for you"]
    assert at_meta[0]["payload"]["context"] == {"message_id": quoted}
    assert rows[0]["wamid"] == at_meta[0]["id"]

    # The transaction shows the conversation in order, with the window's end.
    customer_writes(sc, customer, "thanks!")
    def three_messages() -> dict[str, Any] | None:
        detail = sc.tx(tx_id)
        return detail if len(detail["messages"]) == 3 else None

    detail = eventually(three_messages, what="three messages")
    assert [(m["direction"], m["summary"]) for m in detail["messages"]] == [
        ("inbound", "where is my parcel?"), ("outbound", "Let me check that for you"), ("inbound", "thanks!")]
    assert detail["messages"][1]["state"] == "read" and detail["messages"][1]["reply_to"] == quoted
    assert detail["window_expires_at"] is not None

    # The agent's stream echoes the reply and follows its delivery.
    echo = socket.next("message", where=lambda e: e["message"].get("direction") == "outbound")
    assert echo["transaction_id"] == tx_id and echo["message"]["summary"] == "Let me check that for you"
    # Each status is a webhook of its own from Meta, then a step of the agent: on a loaded machine the last may
    # come well after the store has it.
    seen = [socket.next("message_status", timeout=45)["status"] for _ in range(3)]
    assert sorted(seen) == ["delivered", "read", "sent"]


def test_a_reply_outside_the_window_is_refused_and_a_template_reopens_it(sc: Scenario) -> None:
    connect_callback(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    customer = customer_id()
    # The customer's only message is 25 hours old: the window is closed on Meta's side and ours.
    customer_writes(sc, customer, "old question", age_s=25 * 3600)
    tx_id = int(socket.next("offer")["transaction_id"])
    sc.do(tx_id, "accept", agent)
    refused = sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/messages"), agent.token,
                              json={"type": "text", "text": "hello?"})
    assert refused.status_code == 409 and "template" in refused.json()["detail"]
    assert sent_to(sc, customer) == []

    approved_template(sc, "follow_up", "Hello {{1}}, we are back about your question.")
    bad = sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/messages"), agent.token,
                          json={"type": "template", "template": {"name": "follow_up", "language": "en_US"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "template", "parameters"]
    sc.gateway.ok("POST", sc.org.path(f"/transactions/{tx_id}/messages"), agent.token, 202, json={
        "type": "template", "template": {"name": "follow_up", "language": "en_US", "parameters": ["Ana"]}})
    (row,) = wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"})
    assert row["summary"] == "Hello Ana, we are back about your question."
    (at_meta,) = sent_to(sc, customer)
    assert at_meta["type"] == "template"
    assert at_meta["payload"]["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Ana"}]


def test_only_the_assigned_agent_writes(sc: Scenario) -> None:
    connect_callback(sc)
    first, second = sc.agents(2)
    sc.inbox([first, second])
    socket = sc.socket(first)
    tx_id = converse(sc, first, socket, customer_id())
    _outsider, outsider_token = sc.org.add_user("member")
    for token, code in ((second.token, 409), (outsider_token, 403), (sc.owner, 403)):
        response = sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/messages"), token,
                                   json={"type": "text", "text": "not mine"})
        assert response.status_code == code, (token, response.text)
    bad = sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/messages"), first.token,
                          json={"type": "text", "text": "x", "reply_to": "wamid.nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "reply_to"]
    empty = sc.gateway.call("POST", sc.org.path(f"/transactions/{tx_id}/messages"), first.token,
                            json={"type": "text", "text": ""})
    assert empty.status_code == 422 and ["body", "text", "text"] in [e["loc"] for e in empty.json()["detail"]]
    assert outbound(sc, tx_id) == []


def test_statuses_out_of_order_and_twice_never_move_backwards(any_sc: Scenario) -> None:
    sc = any_sc
    connect_callback(sc)
    # Meta posts read, delivered, sent (newest first), each twice.
    deliveries(sc, reorder=True, duplicate=True)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    tx_id = converse(sc, agent, socket, customer_id())
    reply(sc, agent, tx_id, "first")
    (_row,) = wait_states(sc, tx_id, {"read"})
    # Late and repeated statuses never moved it back: the agent saw only forward steps, ending at `read`.
    socket.next("message_status", where=lambda e: e["status"] == "read")
    time.sleep(0.5)  # the duplicates' time to arrive
    rank = {"sent": 1, "delivered": 2, "read": 3}
    seen = [rank[e["status"]] for e in socket.of_type("message_status")]
    assert seen == sorted(set(seen)) and seen[-1] == 3, seen
    assert outbound(sc, tx_id)[0]["state"] == "read"

    # A failure older than the delivery is ignored; a newer one wins (and reaches the agent).
    deliveries(sc, enabled=False)
    reply(sc, agent, tx_id, "second")
    second = eventually(lambda: next((r for r in outbound(sc, tx_id) if r["summary"] == "second"
                                      and r["wamid"]), None), what="second accepted")
    base = dt.datetime.fromisoformat(second["created_at"]).timestamp()
    sim(sc, "POST", "/statuses", json={"message_id": second["wamid"], "status": "delivered", "timestamp": base + 20})
    sim(sc, "POST", "/statuses", json={"message_id": second["wamid"], "status": "failed", "timestamp": base + 10,
                                       "errors": [{"code": 131026, "title": "Message undeliverable"}]})
    assert next(r for r in outbound(sc, tx_id) if r["id"] == second["id"])["state"] == "delivered"
    sim(sc, "POST", "/statuses", json={"message_id": second["wamid"], "status": "failed", "timestamp": base + 30,
                                       "errors": [{"code": 131026, "title": "Message undeliverable",
                                                   "error_data": {"details": "unreachable phone"}}]})
    failed = next(r for r in outbound(sc, tx_id) if r["id"] == second["id"])
    assert failed["state"] == "failed"
    assert failed["error"] == {"code": 131026, "title": "Message undeliverable", "details": "unreachable phone"}
    event = socket.next("message_status", where=lambda e: e["status"] == "failed")
    assert event["message_id"] == second["id"] and event["error"]["code"] == 131026


def _status_events(sc: Scenario, user_id: int, message_id: int, status: str) -> int:
    ((count,),) = query_db(sc.gateway, "SELECT count(*) FROM agent_events WHERE user_id = :u AND kind = "
                                       "'message_status' AND CAST(payload AS TEXT) LIKE :status AND "
                                       "CAST(payload AS TEXT) LIKE :message",
                           u=user_id, status=f'%"{status}"%', message=f'%"message_id": {message_id},%')
    return int(count)


@pytest.mark.ray
def test_a_status_is_on_the_agents_stream_in_the_commit_that_stores_it(any_sc: Scenario) -> None:
    """Meta's 200 means the status is on the replying agent's stream: nothing is left to a later write of the agent,
    which a dead or restarting actor (or a gateway dying after the commit) would lose or delay."""
    sc = any_sc
    connect_callback(sc)
    deliveries(sc, enabled=False)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    tx_id = converse(sc, agent, socket, customer_id())
    reply(sc, agent, tx_id, "on its way")
    sent = eventually(lambda: next((r for r in outbound(sc, tx_id) if r["wamid"]), None), what="reply accepted")
    cursor = max(int(e["id"]) for e in socket.events)
    socket.close()
    # The agent's actor is gone: no write of its own can show the status now.
    ray.kill(ray.get_actor(f"agent:{sc.org.id}:{agent.id}", namespace=sc.gateway.namespace), no_restart=True)
    sim(sc, "POST", "/statuses", json={"message_id": sent["wamid"], "status": "delivered"})
    assert next(r for r in outbound(sc, tx_id) if r["id"] == sent["id"])["state"] == "delivered"
    assert _status_events(sc, agent.id, sent["id"], "delivered") == 1
    # The agent's workspace reconnects from where it was: the agent (activated again) shows it once, and wrote no
    # second event.
    with sc.socket(agent, cursor=cursor) as again:
        assert again.next("message_status", where=lambda e: e["message_id"] == sent["id"])["status"] == "delivered"
    assert _status_events(sc, agent.id, sent["id"], "delivered") == 1


def test_transient_errors_are_retried_without_a_duplicate_and_permanent_ones_fail(sc: Scenario) -> None:
    connect_callback(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    customer = customer_id()
    tx_id = converse(sc, agent, socket, customer)
    # Throughput, pair limit, 503, then Meta accepts but answers after the gateway's timeout (2 s):
    # the retry carries the same idempotency key and gets Meta's first answer, not a second message.
    inject(sc, {"http_status": 400, "code": 130429}, {"http_status": 400, "code": 131056},
           {"http_status": 503, "code": 2}, {"delay_s": 3.0})
    reply(sc, agent, tx_id, "despite everything")
    (row,) = wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"})
    at_meta = sent_to(sc, customer)
    assert [m["payload"]["text"]["body"] for m in at_meta] == ["despite everything"]
    assert row["wamid"] == at_meta[0]["id"] and row["attempts"] == 5

    # Accepted, but the answer is a 500: retried, still one message at Meta.
    inject(sc, {"http_status": 500, "code": 1, "accept": True})
    once_id = reply(sc, agent, tx_id, "once only")["id"]
    once = eventually(lambda: next((r for r in outbound(sc, tx_id) if r["id"] == once_id and r["wamid"]), None),
                      what="accepted after the in-doubt 500")
    assert once["attempts"] == 2
    assert [m["payload"]["text"]["body"] for m in sent_to(sc, customer)] == ["despite everything", "once only"]

    # A permanent error (undeliverable) fails at once with Meta's reason, and the agent sees it.
    inject(sc, {"http_status": 400, "code": 131026, "message": "Message undeliverable"})
    failed_id = reply(sc, agent, tx_id, "into the void")["id"]
    failed = eventually(lambda: next((r for r in outbound(sc, tx_id) if r["id"] == failed_id
                                      and r["state"] == "failed"), None), what="permanent failure")
    assert failed["attempts"] == 1 and failed["error"]["code"] == 131026
    assert "undeliverable" in failed["error"]["title"]
    event = socket.next("message_status", where=lambda e: e["message_id"] == failed_id)
    assert event["status"] == "failed" and event["error"]["code"] == 131026
    assert len(sent_to(sc, customer)) == 2


def test_a_reply_to_a_customer_known_only_by_their_bsuid_goes_to_the_user_id(sc: Scenario) -> None:
    connect_callback(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    bsuid = f"US.{customer_id()}{customer_id()}"
    # A username user who shares no phone number: Meta sends only the business-scoped user id.
    sc.gateway.simulator.record_inbound(sc.org.numbers[0], bsuid)
    sc.send(None, "hi, no number here", user_id=bsuid, username="@carla")
    tx_id = int(socket.next("offer")["transaction_id"])
    sc.do(tx_id, "accept", agent)
    assert sc.tx(tx_id)["window_expires_at"] is not None
    accepted = reply(sc, agent, tx_id, "Hello Carla")
    assert accepted["to_wa_id"] is None and accepted["to_user_id"] == bsuid
    wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"})
    (at_meta,) = sent_to(sc, bsuid)
    assert at_meta["payload"]["recipient"] == bsuid and "to" not in at_meta["payload"]
    assert at_meta["payload"]["text"]["body"] == "Hello Carla"


def test_a_conversation_orders_the_customers_whole_second_timestamps_against_replies() -> None:
    def message(direction: str, mid: int, sent: str, received: str | None = None) -> MessageOut:
        at = dt.datetime.fromisoformat(f"2026-11-26T{sent}+00:00")
        got = dt.datetime.fromisoformat(f"2026-11-26T{received}+00:00") if received else at
        return MessageOut(id=mid, direction=direction, wamid=None, type="text", summary=f"{direction} {mid}",
                          sent_at=at, received_at=got)

    shown = [
        # Meta says 12:00:00 (whole seconds); we received it at .900, after the reply written at .600.
        message("inbound", 2, "12:00:00", "12:00:00.900"),
        message("outbound", 1, "12:00:00.600"),
        # Received before the reply was written: the customer wrote first.
        message("inbound", 1, "12:00:00", "12:00:00.300"),
        # Redelivered by Meta an hour late: it stays where it was written, before the 11:30 reply.
        message("inbound", 3, "11:00:00", "12:00:05"),
        message("outbound", 2, "11:30:00"),
    ]
    assert [m.summary for m in sorted(shown, key=conversation_order)] == [
        "inbound 3", "outbound 2", "inbound 1", "outbound 1", "inbound 2"]
