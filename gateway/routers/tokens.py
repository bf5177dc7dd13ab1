"""A user's API tokens: listed, issued (shown once) and revoked, by the user or a supervisor.

Revoking a token refuses it at once on this gateway (the principal cache is dropped), within
`WA_ROUTER_PRINCIPAL_CACHE_S` on the others, and closes event streams opened with it within
`WA_ROUTER_WS_RECHECK_INTERVAL_S`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Response
from sqlalchemy import select

from config.models import Role, TokenCreate
from gateway.deps import OrgMember, RuntimeDep, SessionDep, UserId, id_path
from gateway.errors import forbidden, not_found
from gateway.paging import Page, Paging
from gateway.schemas import TokenCreated, TokenOut
from gateway.security import hash_token, new_token
from store.tables import ApiToken, User
from store.types import utcnow

TokenId = Annotated[int, id_path("Token id")]

router = APIRouter(prefix="/v1/orgs/{org_id}/users/{user_id}/tokens", tags=["users"])


async def _holder(ctx: OrgMember, session: SessionDep, user_id: int) -> User:
    """The user whose tokens are managed: oneself, or a user a supervisor may manage."""
    user = await session.get(User, user_id)
    if user is None or user.org_id != ctx.org.id:
        raise not_found("user")
    if ctx.is_self(user_id):
        return user
    if not ctx.is_supervisor:
        raise forbidden("only the user or a supervisor may manage a user's tokens")
    if user.role == Role.owner and ctx.user is not None and ctx.user.role != Role.owner:
        raise forbidden("only an owner may manage owners")
    return user


@router.get("", response_model=Page[TokenOut])
async def list_tokens(user_id: UserId, ctx: OrgMember, session: SessionDep, paging: Paging) -> Page[TokenOut]:
    """Oldest first (by id)."""
    user = await _holder(ctx, session, user_id)
    query = select(ApiToken).where(ApiToken.user_id == user.id)
    tokens = (await session.scalars(paging.oldest_first(query, ApiToken.id))).all()
    return paging.page(tokens, lambda t: (t.id,), lambda t: TokenOut(
        id=t.id, user_id=user.id, created_at=t.created_at, expires_at=t.expires_at))


@router.post("", status_code=201, response_model=TokenCreated)
async def issue_token(user_id: UserId, ctx: OrgMember, session: SessionDep,
                      body: TokenCreate | None = None) -> TokenCreated:
    """A new token for the user (shown once), valid until revoked or for `expires_in_s` seconds."""
    user = await _holder(ctx, session, user_id)
    token = new_token()
    expires_at = None
    if body is not None and body.expires_in_s is not None:
        expires_at = utcnow() + timedelta(seconds=body.expires_in_s)
    row = ApiToken(token_hash=hash_token(token), user_id=user.id, expires_at=expires_at)
    session.add(row)
    await session.commit()
    return TokenCreated(id=row.id, user_id=user.id, created_at=row.created_at, expires_at=row.expires_at, token=token)


@router.delete("/{token_id}", status_code=204)
async def revoke_token(user_id: UserId, token_id: TokenId, ctx: OrgMember, session: SessionDep,
                       runtime: RuntimeDep) -> Response:
    """Revoke one of the user's API tokens: refused at once on this gateway, within `WA_ROUTER_PRINCIPAL_CACHE_S`
    on others; event streams opened with it close. The user, or a supervisor (owners' tokens only by owners).
    """
    user = await _holder(ctx, session, user_id)
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise not_found("token")
    await session.delete(row)
    await session.commit()
    runtime.principals.invalidate()  # refused from the next call here
    return Response(status_code=204)
