"""Paged lists: limit + opaque cursor, every page walked, documented order, 422 on bad input."""

from __future__ import annotations

from typing import Any

from tests.routing_support import Scenario, customer_id
from tests.support import Gateway, assert_invalid, eventually, org_with_waba


def _pages(gateway: Gateway, path: str, token: str, limit: int, **params: Any) -> list[list[Any]]:
    """Each page's items, walking next_cursor to the end."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        page = gateway.ok("GET", path, token, params=query)
        assert len(page["items"]) <= limit
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_users_beyond_the_default_page_are_all_reachable(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    created = [org.owner_id] + [org.add_user()[0] for _ in range(52)]
    first = gateway.ok("GET", org.path("/users"), org.owner_token)
    assert [u["id"] for u in first["items"]] == created[:50] and first["next_cursor"]
    second = gateway.ok("GET", org.path("/users"), org.owner_token, params={"cursor": first["next_cursor"]})
    assert [u["id"] for u in second["items"]] == created[50:] and second["next_cursor"] is None
    pages = _pages(gateway, org.path("/users"), org.owner_token, 7)
    assert [len(p) for p in pages] == [7] * 7 + [4]
    assert [u["id"] for p in pages for u in p] == created  # oldest first, none twice, none missed
    candidates = _pages(gateway, org.path("/inboxes/agent-candidates"), org.owner_token, 10)
    assert [c["user_id"] for p in candidates for c in p] == created[1:]  # the owner holds no WhatsApp licence


def test_transactions_queue_messages_and_events_pages(sc: Scenario) -> None:
    (agent,) = sc.agents(1, available=False)
    inbox = sc.inbox([agent])
    customers = [customer_id() for _ in range(5)]
    for customer in customers:
        sc.send(customer, f"hello from {customer}")
    eventually(lambda: len(sc.transactions()) == 5, what="five conversations")
    oldest_first = [t["id"] for t in sc.transactions()]

    pages = _pages(sc.gateway, sc.org.path("/transactions"), sc.owner, 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t["id"] for p in pages for t in p] == oldest_first[::-1]  # newest first
    filtered = _pages(sc.gateway, sc.org.path("/transactions"), sc.owner, 2, inbox_id=inbox, state="queued")
    assert [t["id"] for p in filtered for t in p] == oldest_first[::-1]

    queue = _pages(sc.gateway, sc.org.path(f"/inboxes/{inbox}/queue"), sc.owner, 2)
    assert [len(p) for p in queue] == [2, 2, 1]
    entries = [q for p in queue for q in p]
    assert [q["id"] for q in entries] == oldest_first  # longest waiting first
    assert [q["first_message"] for q in entries] == [f"hello from {c}" for c in customers]

    tx_id = oldest_first[0]
    for text in ("second", "third"):
        sc.send(customers[0], text)
    eventually(lambda: len(sc.tx(tx_id)["messages"]) == 3, what="three messages")
    messages = _pages(sc.gateway, sc.org.path(f"/transactions/{tx_id}/messages"), sc.owner, 1)
    assert [[m["summary"] for m in p] for p in messages] == [[f"hello from {customers[0]}"], ["second"], ["third"]]

    trail = sc.gateway.items(sc.org.path(f"/transactions/{tx_id}/events"), sc.owner)
    assert len(trail) >= 1
    walked = _pages(sc.gateway, sc.org.path(f"/transactions/{tx_id}/events"), sc.owner, 1)
    assert [e for p in walked for e in p] == trail and len(walked) == len(trail)


def test_inboxes_numbers_accounts_and_orgs_pages(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=3)
    inboxes = [gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201, json={
        "name": f"Inbox {i}", "phone_number_id": number, "assignment_mode": "round_robin", "agents": []})["id"]
        for i, number in enumerate(org.numbers)]
    pages = _pages(gateway, org.path("/inboxes"), org.owner_token, 2)
    assert [[i["id"] for i in p] for p in pages] == [inboxes[:2], inboxes[2:]]
    numbers = _pages(gateway, org.path("/whatsapp/numbers"), org.owner_token, 1)
    assert [n["phone_number_id"] for p in numbers for n in p] == sorted(org.numbers)
    assert len(numbers) == 3
    accounts = gateway.items(org.path("/whatsapp/accounts"), org.owner_token, page_size=1)
    assert [a["waba_id"] for a in accounts] == [org.waba_id]
    orgs = [o["id"] for o in gateway.items("/v1/orgs", gateway.admin_token, page_size=3)]
    assert orgs == sorted(orgs) and len(orgs) == len(set(orgs)) and org.id in orgs


def test_bad_cursor_limit_and_unknown_parameters_are_named(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    path = org.path("/users")
    for cursor in ("not-a-cursor", "WyJ4Il0", "W10"):  # garbage, ["x"] where an id is expected, []
        assert_invalid(gateway.call("GET", path, org.owner_token, params={"cursor": cursor}), "query", "cursor")
    assert_invalid(gateway.call("GET", path, org.owner_token, params={"limit": 201}), "query", "limit")
    assert_invalid(gateway.call("GET", path, org.owner_token, params={"limit": 0}), "query", "limit")
    response = gateway.call("GET", path, org.owner_token, params={"limt": 5})
    assert_invalid(response, "query", "limt")
    assert "limt" in response.text
    # A filter of one list is not a parameter of another.
    assert_invalid(gateway.call("GET", path, org.owner_token, params={"state": "queued"}), "query", "state")
    assert gateway.ok("GET", org.path("/transactions"), org.owner_token, params={"state": "queued"}) == \
        {"items": [], "next_cursor": None}
