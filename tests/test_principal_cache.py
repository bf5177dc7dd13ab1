"""Tokens are resolved from a short cache, which this gateway drops the moment a user or token changes."""

from __future__ import annotations

import time

from gateway.principal_cache import TokenCache
from tests.support import Gateway, create_org


def test_a_deleted_users_token_is_refused_at_once(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, token = org.add_user(role="admin")
    for _ in range(3):  # resolved, and kept in the cache
        gateway.ok("GET", org.path("/users"), token)
    gateway.ok("DELETE", org.path(f"/users/{user_id}"), org.owner_token, 204)
    assert gateway.call("GET", org.path("/users"), token).status_code == 401


def test_a_demoted_users_new_role_applies_at_once(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, token = org.add_user(role="admin")
    gateway.ok("GET", org.path("/users"), token)
    gateway.ok("PATCH", org.path(f"/users/{user_id}"), org.owner_token, json={"role": "member"})
    assert gateway.call("GET", org.path("/users"), token).status_code == 403


def test_token_cache_keeps_values_for_its_ttl_and_forgets_on_invalidate() -> None:
    cache: TokenCache[str] = TokenCache(ttl_s=60)
    cache.put("h", "alice", cache.generation)
    assert cache.get("h") == "alice"
    stale = cache.generation
    cache.invalidate()
    assert cache.get("h") is None
    cache.put("h", "read-before-invalidate", stale)  # a lookup that raced an invalidation keeps nothing
    assert cache.get("h") is None
    short: TokenCache[str] = TokenCache(ttl_s=0.05)
    short.put("h", "bob", short.generation)
    time.sleep(0.1)
    assert short.get("h") is None
    off: TokenCache[str] = TokenCache(ttl_s=0)
    off.put("h", "carol", off.generation)
    assert off.get("h") is None
