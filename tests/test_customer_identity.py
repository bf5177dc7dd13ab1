"""Customers known by business-scoped user id (BSUID), by phone number, or both — end to end.

Since 2026 Meta names every WhatsApp user by a BSUID (`from_user_id`, `contacts[].user_id`); a user
who adopted a username may come with no phone number at all. A customer is one person whichever of
the two a webhook carries: one conversation, one sticky agent, one `customer` in the API.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from meta.simulator import payloads
from tests.routing_support import Scenario, customer_id
from tests.support import eventually, query_db, text_from


def bsuid(country: str = "US") -> str:
    """A fresh business-scoped user id, shaped like Meta's (`US.13491208655302741918`)."""
    return f"{country}.{uuid.uuid4().int % 10**20:020d}"


def summaries(sc: Scenario, tx_id: int) -> list[str]:
    return [m["summary"] for m in sc.tx(tx_id)["messages"]]


def open_txs(sc: Scenario, inbox: int) -> list[dict[str, Any]]:
    return [t for t in sc.transactions(inbox_id=inbox) if t["state"] != "closed"]


def wait_messages(sc: Scenario, tx_id: int, expected: list[str]) -> None:
    eventually(lambda: summaries(sc, tx_id) == expected, what=f"messages {expected} on transaction {tx_id}")


def customers_of_org(sc: Scenario) -> list[tuple[Any, ...]]:
    return query_db(sc.gateway, "SELECT id, user_id, wa_id, username, merged_into FROM customers "
                    "WHERE org_id = :o ORDER BY id", o=sc.org.id)


def send_system(sc: Scenario, message: dict[str, Any]) -> None:
    """A system message, as Meta sends it: no contacts array."""
    number = sc.org.numbers[0]
    value = payloads.messages_value(number, "+1", [message], contacts=[])
    response = sc.org.sender().send_sync(payloads.envelope(sc.org.waba_id, [payloads.change(value)]))
    assert response.status_code == 200, response.text


def test_two_customers_known_only_by_bsuid_get_two_conversations(sc: Scenario) -> None:
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b])
    sock_a, sock_b = sc.socket(a), sc.socket(b)
    pat, uma = bsuid(), bsuid("BR")
    sc.send(None, "pat 1", user_id=pat, username="@pat", name="Pat")
    offer_a = sock_a.next("offer")
    sc.send(None, "uma 1", user_id=uma, username="@uma", name="Uma")
    offer_b = sock_b.next("offer")
    sc.send(None, "pat 2", user_id=pat, username="@pat", name="Pat")

    # Offered separately, each with its own customer; the agent sees the BSUID and the username.
    assert offer_a["transaction_id"] != offer_b["transaction_id"]
    assert {k: offer_a["customer"][k] for k in ("user_id", "wa_id", "username", "name")} == {
        "user_id": pat, "wa_id": None, "username": "@pat", "name": "Pat"}
    assert offer_b["customer"]["user_id"] == uma and offer_b["customer"]["username"] == "@uma"
    wait_messages(sc, offer_a["transaction_id"], ["pat 1", "pat 2"])
    wait_messages(sc, offer_b["transaction_id"], ["uma 1"])
    listed = {t["id"]: t["customer"] for t in sc.transactions(inbox_id=inbox)}
    assert listed[offer_a["transaction_id"]]["user_id"] == pat
    assert listed[offer_b["transaction_id"]]["user_id"] == uma
    assert {q["customer"]["user_id"] for q in sc.queue(inbox)} == {pat, uma}
    assert len(customers_of_org(sc)) == 2


def test_phone_first_then_bsuid_and_phone_is_one_customer_and_one_conversation(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    phone, user = customer_id(), bsuid()
    sc.send(phone, "before usernames", name="Ada")
    tx = sc.tx_of(phone)
    sc.send(phone, "with a BSUID now", user_id=user, name="Ada")
    wait_messages(sc, tx["id"], ["before usernames", "with a BSUID now"])
    assert [t["id"] for t in sc.transactions(inbox_id=inbox)] == [tx["id"]]
    assert sc.tx(tx["id"])["customer"] | {"id": 0} == {"id": 0, "user_id": user, "wa_id": phone, "username": None,
                                                       "name": "Ada"}
    # Later without the number (the user hid it behind a username): still the same conversation.
    sc.send(None, "number hidden", user_id=user, username="ada.l")
    wait_messages(sc, tx["id"], ["before usernames", "with a BSUID now", "number hidden"])
    assert [(c[1], c[2], c[3]) for c in customers_of_org(sc)] == [(user, phone, "ada.l")]


def test_bsuid_first_then_phone_is_one_customer(any_sc: Scenario) -> None:
    sc = any_sc
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    phone, user = customer_id(), bsuid()
    sc.send(None, "username only", user_id=user, username="@bo")
    tx_id = eventually(lambda: open_txs(sc, inbox), what="a conversation")[0]["id"]
    sc.send(phone, "number shared", user_id=user)
    sc.send(phone, "an old client, number only")
    wait_messages(sc, tx_id, ["username only", "number shared", "an old client, number only"])
    assert len(sc.transactions(inbox_id=inbox)) == 1
    assert [(c[1], c[2], c[3], c[4]) for c in customers_of_org(sc)] == [(user, phone, "@bo", None)]


def test_a_customer_seen_as_two_becomes_one_and_keeps_its_open_conversation(sc: Scenario) -> None:
    """Phone-only first (a closed chat), then BSUID-only (unknown: a new customer and conversation),
    then both at once: the two customers are merged into the older, and the open conversation goes on."""
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    sock = sc.socket(agent)
    phone, user = customer_id(), bsuid()
    sc.send(phone, "first chat")
    first = sock.next("offer")["transaction_id"]
    sc.do(first, "accept", agent)
    sc.do(first, "close", agent)
    sc.send(None, "hidden number", user_id=user)
    second = sock.next("offer")["transaction_id"]
    assert second != first
    assert len(customers_of_org(sc)) == 2
    sc.send(phone, "both ids", user_id=user)
    sc.send(None, "hidden again", user_id=user)
    wait_messages(sc, second, ["hidden number", "both ids", "hidden again"])
    assert summaries(sc, first) == ["first chat"]
    (older, newer) = customers_of_org(sc)
    assert (older[1], older[2], older[4]) == (user, phone, None)
    assert (newer[1], newer[2], newer[4]) == (None, None, older[0])  # merged into the older one
    # Both conversations show the one customer; nothing else was opened.
    shown = {t["id"]: (t["customer"]["id"], t["customer"]["user_id"], t["customer"]["wa_id"])
             for t in sc.transactions(inbox_id=inbox)}
    assert shown == {first: (older[0], user, phone), second: (older[0], user, phone)}
    # An action answers with the customer as the reads show it (the one merged into), read or not.
    accepted = sc.do(second, "accept", agent)
    assert accepted["customer"] == sc.tx(second)["customer"] == {
        "id": older[0], "user_id": user, "wa_id": phone, "username": None, "name": accepted["customer"]["name"]}


def test_user_changed_number_keeps_the_conversation(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    old, new = customer_id(), customer_id()
    sc.send(old, "from my old phone")
    tx = sc.tx_of(old)
    send_system(sc, payloads.system_message(old, new))
    sc.send(new, "from my new phone")
    wait_messages(sc, tx["id"], ["from my old phone", f"User {old} changed from {old} to {new}",
                                 "from my new phone"])
    assert len(sc.transactions(inbox_id=inbox)) == 1
    assert sc.tx(tx["id"])["customer"]["wa_id"] == new


def test_user_changed_number_with_a_new_bsuid_keeps_the_conversation(sc: Scenario) -> None:
    """A number change regenerates the BSUID: the system message names the new number and BSUID."""
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    old, new, old_user, new_user = customer_id(), customer_id(), bsuid(), bsuid()
    sc.send(old, "before", user_id=old_user)
    tx = sc.tx_of(old)
    send_system(sc, payloads.system_message(old, new, "changed", user_id=new_user))
    sc.send(new, "after", user_id=new_user)
    wait_messages(sc, tx["id"], ["before", "changed", "after"])
    assert len(sc.transactions(inbox_id=inbox)) == 1
    assert [(c[1], c[2]) for c in customers_of_org(sc)] == [(new_user, new)]


def test_user_changed_user_id_keeps_the_conversation(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    old, new = bsuid(), bsuid()
    sc.send(None, "hello", user_id=old)
    tx_id = eventually(lambda: open_txs(sc, inbox), what="a conversation")[0]["id"]
    send_system(sc, payloads.system_message(None, None, "BSUID changed", "user_changed_user_id",
                                            user_id=new, previous_user_id=old, from_user_id=old))
    sc.send(None, "still me", user_id=new)
    wait_messages(sc, tx_id, ["hello", "BSUID changed", "still me"])
    assert len(sc.transactions(inbox_id=inbox)) == 1
    assert sc.tx(tx_id)["customer"]["user_id"] == new


def test_sticky_agent_follows_a_customer_who_later_comes_with_a_bsuid(sc: Scenario) -> None:
    first_agent, second_agent = sc.agents(2)
    sc.inbox([first_agent, second_agent], mode="sticky")
    socks = {first_agent.id: sc.socket(first_agent), second_agent.id: sc.socket(second_agent)}
    phone, user = customer_id(), bsuid()
    # The first chat ends with the second agent (the first declines): the customer's sticky agent.
    sc.send(phone, "by phone")
    tx = socks[first_agent.id].next("offer")["transaction_id"]
    sc.do(tx, "decline", first_agent)
    assert socks[second_agent.id].next("offer")["transaction_id"] == tx
    sc.do(tx, "accept", second_agent)
    sc.do(tx, "close", second_agent)
    # The customer shows both ids once, then only the BSUID: the sticky agent still gets them first.
    sc.send(phone, "both", user_id=user)
    linked = socks[second_agent.id].next("offer")
    assert linked["customer"]["user_id"] == user and linked["customer"]["wa_id"] == phone
    sc.do(linked["transaction_id"], "accept", second_agent)
    sc.do(linked["transaction_id"], "close", second_agent)
    sc.send(None, "username only", user_id=user, username="@carla")
    again = socks[second_agent.id].next("offer")
    assert again["customer"]["id"] == linked["customer"]["id"]
    # The offer reaches the agent just before the inbox records it: wait for the record.
    assert ("offered", second_agent.id) in sc.wait_trail(again["transaction_id"], "offered")
    assert all(o["transaction_id"] != again["transaction_id"] for o in socks[first_agent.id].of_type("offer"))
    assert sc.trail(again["transaction_id"])[1]["detail"]["sticky_dial"] is True
    assert len(customers_of_org(sc)) == 1


def test_redelivery_creates_no_second_customer(any_sc: Scenario) -> None:
    sc = any_sc
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    user = bsuid()
    body = text_from(sc.org, 0, None, "once", user_id=user, username="@once")
    for _ in range(3):
        response = sc.org.sender().send_sync(body)
        assert response.status_code == 200, response.text
    tx_id = eventually(lambda: open_txs(sc, inbox), what="a conversation")[0]["id"]
    wait_messages(sc, tx_id, ["once"])
    assert [(c[1], c[3]) for c in customers_of_org(sc)] == [(user, "@once")]


def test_concurrent_first_deliveries_of_a_new_customer_make_one_customer(any_sc: Scenario) -> None:
    sc = any_sc
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    phone, user = customer_id(), bsuid()
    count = 8
    bodies = [sc.org.sender().prepare(text_from(sc.org, 0, phone, f"m{i}", user_id=user)) for i in range(count)]
    url = f"{sc.gateway.url}/webhooks/whatsapp/{sc.org.id}"
    clients = [httpx.Client(timeout=60) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            responses = list(pool.map(lambda job: job[0].post(url, content=job[1][0], headers=job[1][1]),
                                      zip(clients, bodies, strict=True)))
    finally:
        for client in clients:
            client.close()
    assert [r.status_code for r in responses] == [200] * count, [r.text for r in responses]
    assert [(c[1], c[2]) for c in customers_of_org(sc)] == [(user, phone)]
    txs = eventually(lambda: (lambda rows: rows if sum(len(summaries(sc, t["id"])) for t in rows) == count
                              else None)(sc.transactions(inbox_id=inbox)), what="every message attached")
    assert len(txs) == 1


def test_concurrent_deliveries_naming_a_customer_differently_leave_one_customer(any_sc: Scenario) -> None:
    """By phone only, by BSUID only and by both, all at once: whatever the order, one customer remains."""
    sc = any_sc
    phone, user = customer_id(), bsuid()
    variants = [(phone, None), (None, user), (phone, user)] * 3
    bodies = [sc.org.sender().prepare(text_from(sc.org, 1, wa, f"v{i}", user_id=uid))
              for i, (wa, uid) in enumerate(variants)]
    url = f"{sc.gateway.url}/webhooks/whatsapp/{sc.org.id}"
    clients = [httpx.Client(timeout=60) for _ in bodies]
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda job: job[0].post(url, content=job[1][0], headers=job[1][1]),
                                      zip(clients, bodies, strict=True)))
    finally:
        for client in clients:
            client.close()
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    live = [c for c in customers_of_org(sc) if c[4] is None]
    assert [(c[1], c[2]) for c in live] == [(user, phone)]
    # Every message (stored for a number with no inbox here) belongs to that customer.
    assert query_db(sc.gateway, "SELECT DISTINCT customer_id FROM inbound_messages WHERE org_id = :o",
                    o=sc.org.id) == [(live[0][0],)]
