"""A user's API tokens: issued (shown once), listed, revoked (refused at once, open streams closed)."""

from __future__ import annotations

from tests.routing_support import AgentSocket, Scenario
from tests.support import Gateway, assert_invalid, create_org


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


def _expire(gateway: Gateway, token_id: int) -> None:
    import asyncio

    from sqlalchemy import text

    from store.db import Database

    async def run() -> None:
        db = Database(gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                await session.execute(text("UPDATE api_tokens SET expires_at = :past WHERE id = :t"),
                                      {"past": "2000-01-01 00:00:00.000000", "t": token_id})
        finally:
            await db.dispose()

    asyncio.run(run())


def test_a_token_may_expire(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, token = org.add_user("member")
    path = org.path(f"/users/{user_id}/tokens")
    issued = gateway.ok("POST", path, token, 201, json={"expires_in_s": 3600})
    assert issued["expires_at"] is not None
    assert [t["expires_at"] is not None for t in gateway.items(path, token)] == [False, True]
    assert_invalid(gateway.call("POST", path, token, json={"expires_in_s": 10}), "body", "expires_in_s")
    # Once its time has come (set in the store here, before the token was ever used) it is refused.
    _expire(gateway, issued["id"])
    assert gateway.call("GET", org.path(f"/users/{user_id}"), issued["token"]).status_code == 401
    gateway.ok("GET", org.path(f"/users/{user_id}"), token)


def test_a_cached_principal_is_kept_no_longer_than_its_token_is_valid() -> None:
    import time

    from gateway.principal_cache import TokenCache

    cache: TokenCache[str] = TokenCache(ttl_s=60)
    cache.put("h", "soon expired", cache.generation, valid_for_s=0.05)
    assert cache.get("h") == "soon expired"
    time.sleep(0.1)
    assert cache.get("h") is None
    cache.put("h", "expired", cache.generation, valid_for_s=-1)
    assert cache.get("h") is None
