"""A number's settings belong to the organization whose inbox uses it, even when its WABA is shared."""

from __future__ import annotations

from tests.support import Gateway, add_simulated_waba, create_org, link_waba, query_db


def _rate(gateway: Gateway, phone_number_id: str) -> int | None:
    rows = query_db(gateway, "SELECT messages_per_second FROM phone_numbers WHERE phone_number_id = :p",
                    p=phone_number_id)
    return rows[0][0]


def test_an_organization_sharing_the_waba_cannot_throttle_anothers_number(gateway: Gateway) -> None:
    waba = add_simulated_waba(gateway)
    owner, sharer = create_org(gateway), create_org(gateway)
    link_waba(owner, waba)
    link_waba(sharer, waba)
    used, free = owner.numbers
    gateway.ok("POST", owner.path("/inboxes"), owner.owner_token, 201, json={"name": "Sales", "phone_number_id": used})
    gateway.ok("PATCH", owner.path(f"/whatsapp/numbers/{used}"), owner.owner_token, json={"messages_per_second": 200})
    response = gateway.call("PATCH", sharer.path(f"/whatsapp/numbers/{used}"), sharer.owner_token,
                            json={"messages_per_second": 1})
    assert response.status_code == 403, response.text
    assert "another organization" in response.json()["detail"]
    assert _rate(gateway, used) == 200
    # A number no inbox uses may be set by any organization linking its WABA.
    gateway.ok("PATCH", sharer.path(f"/whatsapp/numbers/{free}"), sharer.owner_token, json={"messages_per_second": 5})
    assert _rate(gateway, free) == 5
