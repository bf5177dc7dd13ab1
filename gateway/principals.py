"""Who a bearer token stands for: the principal model, and tokens resolved through the principal cache."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.principal_cache import TokenCache
from gateway.security import hash_token
from store.in_lists import in_batches
from store.tables import ApiToken, User
from store.types import utcnow


@dataclass(frozen=True, slots=True)
class Caller:
    """The user a token stands for, as read when the token was resolved: a snapshot, no ORM object,
    so it can be kept across requests (the principal cache) and no route mutates it by accident."""

    id: int
    org_id: int
    role: str
    licenses: tuple[str, ...]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the platform admin (`user` is None) or a user of one organization."""

    user: Caller | None

    @property
    def is_platform_admin(self) -> bool:
        return self.user is None


async def resolve_token(session: AsyncSession, token: str,
                        cache: TokenCache[Principal] | None = None) -> Principal | None:
    """The principal a bearer token stands for, or None for an unknown token (kept in `cache` a few seconds)."""
    return (await resolve_tokens(session, [token], cache))[token]


async def resolve_tokens(session: AsyncSession, tokens: Iterable[str],
                         cache: TokenCache[Principal] | None = None) -> dict[str, Principal | None]:
    """The principal of each token (None for an unknown or expired one): those not in `cache` in one query per
    few hundred, each kept in `cache` a few seconds."""
    digests = {token: hash_token(token) for token in tokens}
    found: dict[str, Principal | None] = {}
    # digest -> token, for the tokens the cache does not hold
    missing: dict[str, str] = {}
    for token, digest in digests.items():
        if cache is not None and (cached := cache.get(digest)) is not None:
            found[token] = cached
        else:
            missing[digest] = token
    generation = cache.generation if cache is not None else 0
    for batch in in_batches(list(missing)):
        # One token (a request's, on a cache miss) keeps the plain comparison: no list expanded per call.
        matching = ApiToken.token_hash == batch[0] if len(batch) == 1 else ApiToken.token_hash.in_(batch)
        rows = (await session.execute(
            select(ApiToken, User).outerjoin(User, User.id == ApiToken.user_id).where(matching))).all()
        for api_token, user in rows:
            principal, valid_for_s = _principal_of(api_token, user)
            found[missing[api_token.token_hash]] = principal
            if cache is not None and principal is not None:
                cache.put(api_token.token_hash, principal, generation, valid_for_s)
    return {token: found.get(token) for token in digests}


def _principal_of(api_token: ApiToken, user: User | None) -> tuple[Principal | None, float | None]:
    """Who a stored token stands for (None: its user is gone, or it expired) and for how many more seconds."""
    if api_token.user_id is not None and user is None:
        return None, None
    valid_for_s = None
    if api_token.expires_at is not None:
        valid_for_s = (api_token.expires_at - utcnow()).total_seconds()
        if valid_for_s <= 0:
            return None, None
    return Principal(user=None if user is None else Caller(
        id=user.id, org_id=user.org_id, role=user.role, licenses=tuple(user.licenses or ()))), valid_for_s
