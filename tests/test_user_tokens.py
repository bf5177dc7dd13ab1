"""A user's API tokens: issued (shown once), listed, revoked (refused at once, open streams closed)."""

from __future__ import annotations

from tests.routing_support import AgentSocket, Scenario
from tests.support import Gateway, create_org


def test_a_user_issues_lists_and_revokes_their_tokens(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, first = org.add_user("member")
    listed = gateway.items(org.path(f"/users/{user_id}/tokens"), first)
    assert len(listed) == 1 and listed[0]["user_id"] == user_id and "token" not in listed[0]
    issued = gateway.ok("POST", org.path(f"/users/{user_id}/tokens"), first, 201)
    assert issued["token"].startswith("war_") and issued["token"] != first
    assert gateway.ok("GET", org.path(f"/users/{user_id}"), issued["token"])["id"] == user_id
    ids = [t["id"] for t in gateway.items(org.path(f"/users/{user_id}/tokens"), issued["token"])]
    assert ids == [listed[0]["id"], issued["id"]]
    assert issued["token"] not in gateway.http.get(org.path(f"/users/{user_id}/tokens"),
                                                   headers={"Authorization": f"Bearer {first}"}).text
    # The first token is revoked with the new one: refused at once, the new one keeps working.
    gateway.ok("GET", org.path(f"/users/{user_id}"), first)  # resolved, cached
    gateway.ok("DELETE", org.path(f"/users/{user_id}/tokens/{listed[0]['id']}"), issued["token"], 204)
    assert gateway.call("GET", org.path(f"/users/{user_id}"), first).status_code == 401
    gateway.ok("GET", org.path(f"/users/{user_id}"), issued["token"])
    assert gateway.call("DELETE", org.path(f"/users/{user_id}/tokens/{listed[0]['id']}"),
                        issued["token"]).status_code == 404


def test_who_may_manage_whose_tokens(gateway: Gateway) -> None:
    org, other = create_org(gateway), create_org(gateway)
    member_id, member_token = org.add_user("member")
    other_member, _ = org.add_user("member")
    _, admin_token = org.add_user("admin")
    assert gateway.call("GET", org.path(f"/users/{other_member}/tokens"), member_token).status_code == 403
    assert gateway.call("POST", org.path(f"/users/{other_member}/tokens"), member_token).status_code == 403
    gateway.ok("POST", org.path(f"/users/{member_id}/tokens"), admin_token, 201)  # a supervisor, for a member
    assert gateway.call("POST", org.path(f"/users/{org.owner_id}/tokens"), admin_token).status_code == 403
    assert gateway.call("GET", org.path(f"/users/{member_id}/tokens"), other.owner_token).status_code == 404
    assert gateway.call("GET", other.path(f"/users/{member_id}/tokens"), other.owner_token).status_code == 404
    # A token id of another user is not found through this one.
    owner_tokens = gateway.items(org.path(f"/users/{org.owner_id}/tokens"), org.owner_token)
    assert gateway.call("DELETE", org.path(f"/users/{member_id}/tokens/{owner_tokens[0]['id']}"),
                        org.owner_token).status_code == 404


def test_revoking_a_token_closes_the_streams_opened_with_it(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    tokens = sc.gateway.items(sc.org.path(f"/users/{a.id}/tokens"), a.token)
    with AgentSocket(sc.gateway, sc.org, a.id, a.token, subprotocol_token=True) as stream:
        sc.gateway.ok("DELETE", sc.org.path(f"/users/{a.id}/tokens/{tokens[0]['id']}"), sc.owner, 204)
        assert stream.wait_closed(timeout=10), "a stream opened with a revoked token stays open"
        assert stream.close_code == 1008
