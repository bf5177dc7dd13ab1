"""Acceptance: the Meta webhook endpoint, linking WABAs against the Graph API (simulator), shared numbers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from meta.simulator.webhook_sender import verify_subscription
from tests.support import (
    Gateway,
    Org,
    add_simulated_waba,
    assert_invalid,
    create_org,
    link_waba,
    org_with_waba,
    query_db,
)


def _numbers(org: Org) -> dict[str, dict[str, Any]]:
    return {n["phone_number_id"]: n for n in org.gateway.items(org.path("/whatsapp/numbers"), org.owner_token)}


def _nothing_linked(org: Org) -> None:
    assert org.gateway.items(org.path("/whatsapp/accounts"), org.owner_token) == []
    assert org.gateway.items(org.path("/whatsapp/numbers"), org.owner_token) == []
    assert query_db(org.gateway, "SELECT count(*) FROM whatsapp_accounts WHERE org_id = :o", o=org.id) == [(0,)]


# ---------------------------------------------------------------- webhook endpoint


def test_webhook_endpoint_and_verify_token_rotation(gateway: Gateway) -> None:
    org = create_org(gateway)
    endpoint = gateway.ok("GET", org.path("/whatsapp/webhook"), org.owner_token)
    assert endpoint["callback_path"] == f"/webhooks/whatsapp/{org.id}"
    assert endpoint["callback_url"] == f"https://router.example.test/webhooks/whatsapp/{org.id}"
    old = endpoint["verify_token"]
    assert old and gateway.ok("GET", org.path("/whatsapp/webhook"), org.owner_token)["verify_token"] == old

    callback = f"{gateway.url}{endpoint['callback_path']}"
    answer = verify_subscription(callback, old, "challenge-123")
    assert answer.status_code == 200 and answer.text == "challenge-123"

    rotated = gateway.ok("POST", org.path("/whatsapp/webhook/rotate"), org.owner_token)
    assert rotated["verify_token"] != old and rotated["callback_path"] == endpoint["callback_path"]
    assert gateway.ok("GET", org.path("/whatsapp/webhook"), org.owner_token)["verify_token"] == rotated["verify_token"]
    assert verify_subscription(callback, old, "again").status_code == 403
    assert verify_subscription(callback, rotated["verify_token"], "again").text == "again"
    # Every organization has its own token.
    other = create_org(gateway)
    assert verify_subscription(f"{gateway.url}/webhooks/whatsapp/{other.id}", rotated["verify_token"],
                               "x").status_code == 403


# ---------------------------------------------------------------- linking


def test_link_lists_numbers_and_never_returns_or_stores_secrets_in_clear(gateway: Gateway) -> None:
    org = create_org(gateway)
    waba = add_simulated_waba(gateway, numbers=2)
    linked = link_waba(org, waba)
    assert linked["waba_id"] == org.waba_id and linked["name"].startswith("Business")
    assert sorted(n["phone_number_id"] for n in linked["phone_numbers"]) == sorted(org.numbers)
    assert all(n["available"] and n["inbox_id"] is None for n in linked["phone_numbers"])
    assert {n["verified_name"] for n in linked["phone_numbers"]} == {"Number 1", "Number 2"}

    responses = [
        gateway.call("GET", org.path("/whatsapp/accounts"), org.owner_token),
        gateway.call("GET", org.path(f"/whatsapp/accounts/{org.waba_id}"), org.owner_token),
        gateway.call("POST", org.path(f"/whatsapp/accounts/{org.waba_id}/refresh"), org.owner_token),
        gateway.call("GET", org.path("/whatsapp/numbers"), org.owner_token),
        gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                     json={"waba_id": org.waba_id, "access_token": org.access_token, "app_secret": org.app_secret}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 409]
    for text in [str(linked)] + [r.text for r in responses]:
        assert org.access_token not in text and org.app_secret not in text
        assert "access_token" not in text and "app_secret" not in text and "_enc" not in text
    (token_enc, secret_enc), = query_db(
        gateway, "SELECT access_token_enc, app_secret_enc FROM whatsapp_accounts WHERE org_id = :o", o=org.id)
    assert token_enc != org.access_token and org.access_token not in token_enc
    assert secret_enc != org.app_secret and org.app_secret not in secret_enc


def test_link_refused_by_meta_is_422_with_metas_error_and_stores_nothing(gateway: Gateway) -> None:
    org = create_org(gateway)
    waba_id, token, secret, _ = add_simulated_waba(gateway)
    bad_token = gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                             json={"waba_id": waba_id, "access_token": "EAAG-wrong", "app_secret": secret})
    assert_invalid(bad_token, "body", "access_token")
    assert bad_token.json()["meta_error"]["code"] == 190
    assert "Invalid OAuth access token" in bad_token.json()["meta_error"]["message"]
    assert "190" in bad_token.text and "EAAG-wrong" not in bad_token.text

    _, other_token, _, _ = add_simulated_waba(gateway)  # a real token that cannot see this WABA
    unknown = gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                           json={"waba_id": waba_id, "access_token": other_token, "app_secret": secret})
    assert_invalid(unknown, "body", "waba_id")
    assert unknown.json()["meta_error"]["code"] == 100 and "does not exist" in unknown.json()["meta_error"]["message"]

    missing = gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                           json={"waba_id": "999999999999", "access_token": token, "app_secret": secret})
    assert_invalid(missing, "body", "waba_id")

    gateway.simulator.revoke_token(token)
    revoked = gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                           json={"waba_id": waba_id, "access_token": token, "app_secret": secret})
    assert_invalid(revoked, "body", "access_token")
    _nothing_linked(org)


@pytest.mark.parametrize(("body", "loc"), [
    ({"waba_id": "12ab", "access_token": "t", "app_secret": "s"}, ("body", "waba_id")),
    ({"waba_id": "", "access_token": "t", "app_secret": "s"}, ("body", "waba_id")),
    ({"waba_id": 123, "access_token": "t", "app_secret": "s"}, ("body", "waba_id")),
    ({"access_token": "t", "app_secret": "s"}, ("body", "waba_id")),
    ({"waba_id": "123", "app_secret": "s"}, ("body", "access_token")),
    ({"waba_id": "123", "access_token": "", "app_secret": "s"}, ("body", "access_token")),
    ({"waba_id": "123", "access_token": "t"}, ("body", "app_secret")),
    ({"waba_id": "123", "access_token": "t", "app_secret": "s", "phone": "1"}, ("body", "phone")),
])
def test_bad_link_input_is_422_naming_the_field(gateway: Gateway, body: dict[str, Any],
                                                loc: tuple[str, ...]) -> None:
    org = create_org(gateway)
    assert_invalid(gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token, json=body), *loc)
    _nothing_linked(org)


def test_link_follows_graph_paging(gateway: Gateway) -> None:
    # The Graph API pages 25 numbers at a time: all 31 must arrive.
    org = create_org(gateway)
    linked = link_waba(org, add_simulated_waba(gateway, numbers=31))
    assert len(linked["phone_numbers"]) == 31
    assert set(_numbers(org)) == set(org.numbers)


def test_refresh_reads_new_numbers_and_unknown_accounts_are_404(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=1)
    new_id = str(10**14 + int(uuid.uuid4().int % 10**13))
    gateway.simulator.add_number(org.waba_id, new_id, "+1 555 000 1234", "Number 3")
    assert new_id not in _numbers(org)
    refreshed = gateway.ok("POST", org.path(f"/whatsapp/accounts/{org.waba_id}/refresh"), org.owner_token)
    assert new_id in [n["phone_number_id"] for n in refreshed["phone_numbers"]]
    assert _numbers(org)[new_id]["verified_name"] == "Number 3"
    for method, suffix in (("GET", ""), ("POST", "/refresh"), ("DELETE", "")):
        response = gateway.call(method, org.path(f"/whatsapp/accounts/424242{suffix}"), org.owner_token)
        assert response.status_code == 404


def test_refresh_with_a_revoked_token_is_409_with_metas_error(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=1)
    gateway.simulator.revoke_token(org.access_token)
    response = gateway.call("POST", org.path(f"/whatsapp/accounts/{org.waba_id}/refresh"), org.owner_token)
    # The request was fine; the link needs renewing.
    assert response.status_code == 409 and response.json()["meta_error"]["code"] == 190
    assert "stored access token" in response.json()["detail"]
    assert len(_numbers(org)) == 1  # the account and its numbers stay


def test_unlink_is_409_while_an_inbox_uses_a_number(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    inbox = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                       json={"name": "Support", "phone_number_id": org.numbers[0]})
    refused = gateway.call("DELETE", org.path(f"/whatsapp/accounts/{org.waba_id}"), org.owner_token)
    assert refused.status_code == 409 and "Support" in refused.text
    assert len(gateway.items(org.path("/whatsapp/accounts"), org.owner_token)) == 1
    gateway.ok("DELETE", org.path(f"/inboxes/{inbox['id']}"), org.owner_token, 204)
    gateway.ok("DELETE", org.path(f"/whatsapp/accounts/{org.waba_id}"), org.owner_token, 204)
    _nothing_linked(org)
    # Its numbers can no longer be used here.
    assert_invalid(gateway.call("POST", org.path("/inboxes"), org.owner_token,
                                json={"name": "Again", "phone_number_id": org.numbers[0]}),
                   "body", "phone_number_id")


# ---------------------------------------------------------------- one WABA, many organizations


def test_shared_waba_numbers_are_available_to_one_org_only(gateway: Gateway) -> None:
    """The seed's example: Number 1 and Number 2 linked to A and B; A uses Number 1; B may only use Number 2."""
    waba = add_simulated_waba(gateway, numbers=2)
    a, b = create_org(gateway), create_org(gateway)
    link_waba(a, waba)
    link_waba(b, waba)
    number_1, number_2 = waba[3]
    inbox = gateway.ok("POST", a.path("/inboxes"), a.owner_token, 201,
                       json={"name": "A sales", "phone_number_id": number_1})

    in_b = _numbers(b)
    assert {pid: n["available"] for pid, n in in_b.items()} == {number_1: False, number_2: True}
    assert in_b[number_1]["inbox_id"] is None  # A's inbox stays invisible to B
    in_a = _numbers(a)
    assert not in_a[number_1]["available"] and in_a[number_1]["inbox_id"] == inbox["id"]

    taken = gateway.call("POST", b.path("/inboxes"), b.owner_token,
                         json={"name": "B sales", "phone_number_id": number_1})
    assert taken.status_code == 409 and "A sales" not in taken.text
    assert gateway.items(b.path("/inboxes"), b.owner_token) == []
    gateway.ok("POST", b.path("/inboxes"), b.owner_token, 201, json={"name": "B sales", "phone_number_id": number_2})
    assert not any(n["available"] for n in _numbers(a).values())

    # Unlinking in B does not touch A; A's inbox keeps its number.
    assert gateway.call("DELETE", b.path(f"/whatsapp/accounts/{b.waba_id}"), b.owner_token).status_code == 409
    assert gateway.ok("GET", a.path(f"/inboxes/{inbox['id']}"), a.owner_token)["phone_number_id"] == number_1
    # Freeing Number 1 in A makes it available to B.
    gateway.ok("DELETE", a.path(f"/inboxes/{inbox['id']}"), a.owner_token, 204)
    assert _numbers(b)[number_1]["available"]


def test_meta_unreachable_is_502_and_nothing_is_stored(gateway_without_meta: Gateway) -> None:
    gateway = gateway_without_meta
    org = create_org(gateway)
    wid, token, secret, _ = add_simulated_waba(gateway)
    response = gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                            json={"waba_id": wid, "access_token": token, "app_secret": secret})
    assert response.status_code == 502
    assert "could not be reached" in response.json()["detail"]
    assert token not in response.text and secret not in response.text
    assert gateway.items(org.path("/whatsapp/accounts"), org.owner_token) == []
    assert gateway.items(org.path("/whatsapp/numbers"), org.owner_token) == []


@pytest.mark.parametrize("bad_token", ["tök-EAAG", "EAAG\nX-Injected: 1", "EAAG with space", "EAAG\x7f"])
def test_an_access_token_meta_could_not_be_sent_is_422_not_a_crash(gateway: Gateway, bad_token: str) -> None:
    # Found by schemathesis: a token that cannot travel in an HTTP header made the Graph call raise (500).
    org = create_org(gateway)
    wid, _, secret, _ = add_simulated_waba(gateway)
    assert_invalid(gateway.call("POST", org.path("/whatsapp/accounts"), org.owner_token,
                                json={"waba_id": wid, "access_token": bad_token, "app_secret": secret}),
                   "body", "access_token")
    assert gateway.items(org.path("/whatsapp/accounts"), org.owner_token) == []
    linked = org_with_waba(gateway)
    assert_invalid(gateway.call("PUT", linked.path(f"/whatsapp/accounts/{linked.waba_id}/credentials"),
                                linked.owner_token, json={"access_token": bad_token, "app_secret": secret}),
                   "body", "access_token")
