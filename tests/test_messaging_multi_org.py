"""One WABA linked to several organizations: each number's customers reach the organization owning it."""

from __future__ import annotations

from tests.routing_support import Scenario, customer_id
from tests.support import Gateway, add_simulated_waba, create_org, eventually, link_waba, query_db, text_from


def test_the_seeds_two_organization_waba_routes_each_number_to_its_owner(any_gateway: Gateway) -> None:
    gateway = any_gateway
    waba = add_simulated_waba(gateway, numbers=3)
    first, second, third = create_org(gateway), create_org(gateway), create_org(gateway)
    link_waba(first, waba)
    link_waba(second, waba)
    # A third organization stored a different app secret for the same WABA (a mistake, or an attempt to
    # make another organization's endpoint forward it messages it could then forge).
    third_waba = (waba[0], waba[1], "not-the-app-secret", waba[3])
    link_waba(third, third_waba)
    a, b, c = Scenario(gateway, first), Scenario(gateway, second), Scenario(gateway, third)
    try:
        (agent_a,) = a.agents(1)
        (agent_b,) = b.agents(1)
        (agent_c,) = c.agents(1)
        inbox_a = a.inbox([agent_a], number=0)
        inbox_b = b.inbox([agent_b], number=1)
        c.inbox([agent_c], number=2)
        socket_a, socket_b = a.socket(agent_a), b.socket(agent_b)
        # Meta calls one callback per app: every number's messages arrive at organization A's endpoint.
        customer_1, customer_2, customer_3 = customer_id(), customer_id(), customer_id()
        for number, customer in ((0, customer_1), (1, customer_2), (2, customer_3)):
            response = first.sender().send_sync(text_from(first, number, customer, f"to number {number + 1}"))
            assert response.status_code == 200, response.text

        offer_a = socket_a.next("offer")
        offer_b = socket_b.next("offer")
        assert a.tx(offer_a["transaction_id"])["customer"]["wa_id"] == customer_1
        assert b.tx(offer_b["transaction_id"])["customer"]["wa_id"] == customer_2
        assert a.tx(offer_a["transaction_id"])["inbox_id"] == inbox_a
        assert b.tx(offer_b["transaction_id"])["inbox_id"] == inbox_b
        # B's agent answers and the conversation continues in B.
        b.do(offer_b["transaction_id"], "accept", agent_b)
        first.sender().send_sync(text_from(first, 1, customer_2, "second message"))
        eventually(lambda: len(b.tx(offer_b["transaction_id"])["messages"]) == 2, what="second message in B")

        # Number 3's message did not verify with C's secret: kept (flagged) in A, never routed to C.
        assert c.transactions() == []
        rows = query_db(gateway, "SELECT org_id, inbox_id, flag FROM inbound_messages WHERE from_wa_id = :c",
                        c=customer_3)
        assert len(rows) == 1 and rows[0][0] == first.id and rows[0][1] is None
        assert f"organization {third.id}" in rows[0][2]
        # Nothing of B's or C's customers was routed inside A.
        assert {t["customer"]["wa_id"] for t in a.transactions()} == {customer_1}
    finally:
        for scenario in (a, b, c):
            scenario.close()
