"""Supervisor statistics: after real routed conversations the figures are exactly what the store holds.

Real gateway, real actors, signed webhooks; the expected figures are computed here from the store's
own rows (audit trail, transactions), not from the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.routing_support import Scenario, customer_id
from tests.support import assert_invalid, eventually, query_db


def _at(value: Any) -> datetime:
    # SQLite hands raw SQL its stored text; PostgreSQL a datetime.
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _expected_from_store(sc: Scenario, inbox: int) -> dict[str, Any]:
    events = query_db(sc.gateway, "SELECT e.transaction_id, e.kind, e.at FROM transaction_events e "
                      "JOIN transactions t ON t.id = e.transaction_id WHERE t.inbox_id = :inbox ORDER BY e.id",
                      inbox=inbox)
    queued: dict[int, datetime] = {}
    answered: dict[int, datetime] = {}
    closed_waiting: set[int] = set()
    for tx, kind, at in events:
        if kind == "queued":
            queued.setdefault(tx, _at(at))
        elif kind in ("accepted", "claimed"):
            answered.setdefault(tx, _at(at))
        elif kind == "closed" and tx not in answered:
            closed_waiting.add(tx)
    answer_s = [(answered[tx] - queued[tx]).total_seconds() for tx in answered if tx in queued]
    handled = query_db(sc.gateway, "SELECT assigned_at, closed_at FROM transactions WHERE inbox_id = :inbox "
                       "AND state = 'closed' AND agent_id IS NOT NULL AND assigned_at IS NOT NULL", inbox=inbox)
    handle_s = [(_at(c) - _at(a)).total_seconds() for a, c in handled]
    kinds = [kind for _, kind, _ in events]
    return {
        "contacts": len(queued), "answered": len(answer_s), "abandoned": len(closed_waiting & set(queued)),
        "average_speed_of_answer_s": sum(answer_s) / len(answer_s),
        "average_handle_time_s": sum(handle_s) / len(handle_s),
        "offers_made": kinds.count("offered"), "offers_accepted": kinds.count("accepted"),
        "offers_declined": kinds.count("declined"), "offers_missed": kinds.count("missed"),
    }


def test_stats_match_the_store_after_routed_conversations(any_sc: Scenario) -> None:
    sc = any_sc
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b])
    other_inbox = sc.inbox([a], number=1)  # no traffic; agent a serves both
    sock_a, sock_b = sc.socket(a), sc.socket(b)

    # Customer 1: offered to a, declined, offered to b, accepted, handled, closed.
    sc.send(customer_id(), "first")
    first = sock_a.next("offer")["transaction_id"]
    sc.do(first, "decline", a)
    assert sock_b.next("offer")["transaction_id"] == first
    sc.do(first, "accept", b)
    # Customer 2: offered to a (b is at capacity), then closed by a supervisor while waiting: abandoned.
    sc.send(customer_id(), "second")
    second = sock_a.next("offer", where=lambda e: e["transaction_id"] != first)["transaction_id"]
    sc.gateway.ok("POST", sc.org.path(f"/transactions/{second}/close"), sc.owner)
    sc.do(first, "close", b)
    # Customer 3 waits: nobody available.
    sc.status(a, "away")
    sc.status(b, "away")
    sc.send(customer_id(), "third")
    third = eventually(lambda: sc.queue(inbox), what="the third customer queued")[0]["id"]

    stats = sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}/stats"), sc.owner)
    expected = _expected_from_store(sc, inbox)
    assert expected["contacts"] == 3 and expected["answered"] == 1 and expected["abandoned"] == 1
    assert expected["offers_made"] == 3 and expected["offers_declined"] == 1 and expected["offers_accepted"] == 1
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, abs=1e-3), (name, stats)
    # Service level: the answered contact was answered within 20 s, the abandoned one counts against it.
    assert stats["service_level_threshold_s"] == 20 and stats["answered_within_threshold"] == 1
    assert stats["service_level"] == pytest.approx(0.5)
    assert stats["contacts_in_queue"] == 1 and stats["oldest_contact_age_s"] >= 0
    waiting_since = query_db(sc.gateway, "SELECT waiting_since FROM transactions WHERE id = :id", id=third)[0][0]
    assert stats["oldest_contact_age_s"] <= (datetime.now(UTC) - _at(waiting_since)).total_seconds() + 1
    assert (stats["agents_available"], stats["agents_away"], stats["agents_on_contact"],
            stats["agents_offline"]) == (0, 2, 0, 0)
    assert stats["window_s"] == 86400 and stats["inbox_id"] == inbox

    # The organization: the same contacts (the other inbox had none), each agent once though a serves two.
    org = sc.gateway.ok("GET", sc.org.path("/stats"), sc.owner)
    assert [i["inbox_id"] for i in org["inboxes"]] == [inbox, other_inbox]
    assert org["inboxes"][0] == stats | {"oldest_contact_age_s": org["inboxes"][0]["oldest_contact_age_s"]}
    for name in ("contacts", "answered", "abandoned", "offers_made", "offers_declined", "contacts_in_queue"):
        assert org[name] == stats[name], name
    assert org["agents_away"] == 2 and sum(org["inboxes"][i]["agents_away"] for i in (0, 1)) == 3

    # A conversation being handled: b is on contact.
    sc.status(b, "available")
    assert sock_b.next("offer", where=lambda e: e["transaction_id"] == third)
    sc.do(third, "accept", b)
    now = sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}/stats"), sc.owner)
    assert now["agents_on_contact"] == 1 and now["contacts_in_queue"] == 0 and now["oldest_contact_age_s"] is None


def test_stats_are_for_supervisors_and_validate_their_window(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    assert sc.gateway.call("GET", sc.org.path(f"/inboxes/{inbox}/stats"), agent.token).status_code == 403
    assert sc.gateway.call("GET", sc.org.path("/stats"), agent.token).status_code == 403
    assert_invalid(sc.gateway.call("GET", sc.org.path(f"/inboxes/{inbox}/stats"), sc.owner,
                                   params={"window_s": 5}), "query", "window_s")
    assert_invalid(sc.gateway.call("GET", sc.org.path("/stats"), sc.owner, params={"window_s": "x"}),
                   "query", "window_s")
    assert sc.gateway.call("GET", sc.org.path("/inboxes/999999/stats"), sc.owner).status_code == 404
    empty = sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}/stats"), sc.owner, params={"window_s": 3600})
    assert empty["contacts"] == 0 and empty["service_level"] is None and empty["average_speed_of_answer_s"] is None


def test_the_service_level_threshold_is_an_inbox_setting(sc: Scenario) -> None:
    inbox = sc.inbox([])
    assert sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}"), sc.owner)["service_level_threshold_s"] == 20
    assert_invalid(sc.gateway.call("PATCH", sc.org.path(f"/inboxes/{inbox}"), sc.owner,
                                   json={"service_level_threshold_s": 0}), "body", "service_level_threshold_s")
    changed = sc.gateway.ok("PATCH", sc.org.path(f"/inboxes/{inbox}"), sc.owner, json={"service_level_threshold_s": 45})
    assert changed["service_level_threshold_s"] == 45
    stats = sc.gateway.ok("GET", sc.org.path(f"/inboxes/{inbox}/stats"), sc.owner)
    assert stats["service_level_threshold_s"] == 45
