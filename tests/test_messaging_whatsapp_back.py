"""WhatsApp Back: an agent writes first with an approved template; the customer's reply comes back to them."""

from __future__ import annotations

from tests.messaging_support import approved_template, connect_callback, customer_writes, reply, sent_to, wait_states
from tests.routing_support import Scenario, customer_id
from tests.support import assert_invalid


def test_an_agent_starts_a_conversation_and_the_customers_reply_reaches_them(sc: Scenario) -> None:
    connect_callback(sc)
    first, second = sc.agents(2)
    inbox = sc.inbox([first, second])
    approved_template(sc, "back_in_stock", "Hi {{1}}, the item you asked about is back in stock.")
    socket = sc.socket(first)
    customer = customer_id()
    path = sc.org.path(f"/inboxes/{inbox}/outbound")
    start = {"to": {"wa_id": customer},
             "template": {"name": "back_in_stock", "language": "en_US", "parameters": ["Ana"]}}

    # The rules first: placeholders counted, only approved templates, only the inbox's agents.
    assert_invalid(sc.gateway.call("POST", path, first.token, json={**start, "template": {
        **start["template"], "parameters": []}}), "body", "template", "parameters")
    assert_invalid(sc.gateway.call("POST", path, first.token, json={**start, "template": {
        **start["template"], "name": "never_made"}}), "body", "template", "name")
    assert_invalid(sc.gateway.call("POST", path, first.token, json={"to": {}, "template": start["template"]}),
                   "body", "to")
    _outsider, outsider_token = sc.org.add_user("member")
    assert sc.gateway.call("POST", path, outsider_token, json=start).status_code == 403

    started = sc.gateway.ok("POST", path, first.token, 202, json=start)
    tx_id = started["transaction_id"]
    assert started["reused"] is False and started["message"]["state"] == "queued"
    assert socket.next("assigned")["transaction_id"] == tx_id
    tx = sc.tx(tx_id)
    assert tx["state"] == "assigned" and tx["agent_id"] == first.id and tx["customer"]["wa_id"] == customer
    wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"})
    (at_meta,) = sent_to(sc, customer)
    assert at_meta["type"] == "template" and at_meta["payload"]["template"]["name"] == "back_in_stock"

    # Again while it is open: the same conversation; another agent may not take it over.
    assert sc.gateway.ok("POST", path, first.token, 202, json=start)["transaction_id"] == tx_id
    assert sc.gateway.call("POST", path, second.token, json=start).status_code == 409

    # The customer answers: same conversation, same agent, and the window is open for free text.
    customer_writes(sc, customer, "great, I'll take two")
    message = socket.next("message", where=lambda e: e["message"].get("direction") != "outbound")
    assert message["transaction_id"] == tx_id
    assert sc.tx_ids_of(customer) == {tx_id}
    reply(sc, first, tx_id, "Done, two are reserved for you")
    wait_states(sc, tx_id, {"accepted", "sent", "delivered", "read"}, count=3)
    assert [m["type"] for m in sent_to(sc, customer)] == ["template", "template", "text"]


def test_whatsapp_back_to_a_bsuid_reaches_the_customer_by_user_id(sc: Scenario) -> None:
    connect_callback(sc)
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    approved_template(sc, "hello_again", "Hello again, {{1}}!")
    bsuid = f"US.{customer_id()}"
    started = sc.gateway.ok("POST", sc.org.path(f"/inboxes/{inbox}/outbound"), agent.token, 202, json={
        "to": {"user_id": bsuid}, "template": {"name": "hello_again", "language": "en_US", "parameters": ["Bo"]}})
    assert started["message"]["to_user_id"] == bsuid
    assert sc.tx(started["transaction_id"])["customer"]["user_id"] == bsuid
    wait_states(sc, started["transaction_id"], {"accepted", "sent", "delivered", "read"})
    (at_meta,) = sent_to(sc, bsuid)
    assert at_meta["payload"]["recipient"] == bsuid and at_meta["type"] == "template"
    # The customer answers with their BSUID: the same conversation.
    socket = sc.socket(agent, cursor=0)
    sc.send(None, "who is this?", user_id=bsuid)
    message = socket.next("message", where=lambda e: e["message"].get("direction") != "outbound")
    assert message["transaction_id"] == started["transaction_id"]
