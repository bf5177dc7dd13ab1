"""Users of an organization: roles (owner, admin = supervisors; member = agent) and licences."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from config.models import License, Role, UserCreate, UserUpdate, holds_agent_licenses
from gateway.deps import OrgMember, RuntimeDep, SessionDep, Supervisor, UserId
from gateway.errors import conflict, forbidden, not_found
from gateway.paging import Page, Paging
from gateway.schemas import UserCreated, UserOut
from gateway.security import hash_token, new_token
from store.inbox_ownership import bump_config_version
from store.tables import ApiToken, InboxAgent, Transaction, User

router = APIRouter(prefix="/v1/orgs/{org_id}/users", tags=["users"])


async def add_user(session: AsyncSession, org_id: int, *, name: str, email: str, role: Role,
                   licenses: Sequence[License]) -> tuple[User, str]:
    """Insert a user and their first token; returns the token in clear (shown once)."""
    existing = await session.scalar(
        select(User.id).where(User.org_id == org_id, func.lower(User.email) == email.lower())
    )
    if existing is not None:
        raise conflict(f"a user with email {email} already exists in this organization")
    user = User(org_id=org_id, name=name, email=email, role=role.value, licenses=[lic.value for lic in licenses])
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent insert of the same email
        raise conflict(f"a user with email {email} already exists in this organization") from exc
    token = new_token()
    session.add(ApiToken(token_hash=hash_token(token), user_id=user.id))
    return user, token


async def _get_user(session: AsyncSession, org_id: int, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None or user.org_id != org_id:
        raise not_found("user")
    return user


def _check_may_manage(ctx: OrgMember, target_role: Role) -> None:
    # Only an owner (or the platform admin) may create, change or remove an owner.
    if target_role is Role.owner and ctx.user is not None and ctx.user.role != Role.owner:
        raise forbidden("only an owner may manage owners")


def _check_may_license(ctx: OrgMember) -> None:
    # Licences are an owner's act (or the platform admin's): an admin grants nothing, not even to
    # themselves. An owner's own licences add nothing an owner could not already give another account.
    if ctx.user is not None and ctx.user.role != Role.owner:
        raise forbidden("only an owner may grant or revoke licences")


async def _owner_count(session: AsyncSession, org_id: int) -> int:
    return int(await session.scalar(
        select(func.count()).select_from(User).where(User.org_id == org_id, User.role == Role.owner.value)
    ) or 0)


@router.post("", status_code=201, response_model=UserCreated)
async def create_user(body: UserCreate, ctx: Supervisor, session: SessionDep) -> UserCreated:
    """Create a user with a role and licences; the answer carries their first API token, shown once. Supervisors
    (owners by owners; licences by owners).
    """
    _check_may_manage(ctx, body.role)
    if body.licenses:
        _check_may_license(ctx)
    user, token = await add_user(session, ctx.org.id, name=body.name, email=body.email, role=body.role,
                                 licenses=body.licenses)
    await session.commit()
    return UserCreated(**UserOut.of(user).model_dump(), token=token)


@router.get("", response_model=Page[UserOut])
async def list_users(ctx: Supervisor, session: SessionDep, paging: Paging) -> Page[UserOut]:
    """Oldest first (by id)."""
    query = select(User).where(User.org_id == ctx.org.id)
    users = (await session.scalars(paging.oldest_first(query, User.id))).all()
    return paging.page(users, lambda u: (u.id,), UserOut.of)


@router.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: UserId, ctx: OrgMember, session: SessionDep) -> UserOut:
    """One user of the organization with role and licences."""
    if not ctx.is_supervisor and not ctx.is_self(user_id):
        raise forbidden("members may only read their own user")
    return UserOut.of(await _get_user(session, ctx.org.id, user_id))


@router.patch("/{user_id}", response_model=UserOut)
async def update_user(user_id: UserId, body: UserUpdate, ctx: Supervisor, session: SessionDep,
                      runtime: RuntimeDep) -> UserOut:
    """Change a user's name, role or licences (licences only by an owner; revoking the WhatsApp licence removes
    them from every inbox). Supervisors.
    """
    user = await _get_user(session, ctx.org.id, user_id)
    _check_may_manage(ctx, Role(user.role))
    if body.role is not None:
        _check_may_manage(ctx, body.role)
        if user.role == Role.owner and body.role is not Role.owner and await _owner_count(session, ctx.org.id) <= 1:
            raise conflict("the organization's last owner cannot be demoted")
        user.role = body.role.value
    if body.name is not None:
        user.name = body.name
    removed_from: list[int] = []
    if body.licenses is not None and set(body.licenses) != set(user.licenses or ()):
        _check_may_license(ctx)  # the same licences again change nothing: allowed to anyone who may edit
        user.licenses = [lic.value for lic in body.licenses]
        if not holds_agent_licenses(user.licenses):
            # Without the WhatsApp licence a user cannot be an inbox agent anywhere.
            removed_from = list((await session.scalars(
                delete(InboxAgent).where(InboxAgent.user_id == user.id).returning(InboxAgent.inbox_id)
            )).all())
    # In the same commit: the inboxes' actors reload even if the notification below never reaches them.
    await bump_config_version(session, removed_from)
    await session.commit()
    runtime.principals.invalidate()  # the new role or licences apply to the user's next call here
    if removed_from:
        await runtime.routing.inboxes_changed(ctx.org.id, removed_from)
    return UserOut.of(user)


@router.delete("/{user_id}", status_code=204)
async def delete_user(user_id: UserId, ctx: Supervisor, session: SessionDep, runtime: RuntimeDep) -> Response:
    """Delete a user (the last owner cannot be removed); they leave every inbox. Supervisors."""
    user = await _get_user(session, ctx.org.id, user_id)
    _check_may_manage(ctx, Role(user.role))
    if user.role == Role.owner and await _owner_count(session, ctx.org.id) <= 1:
        raise conflict("the organization's last owner cannot be deleted")
    open_chats = await session.scalar(
        select(func.count()).select_from(Transaction)
        .where(Transaction.agent_id == user.id, Transaction.state == "assigned")
    )
    if open_chats:
        raise conflict(f"user {user.id} still handles {open_chats} conversation(s); transfer them first")
    inbox_ids = list((await session.scalars(select(InboxAgent.inbox_id).where(InboxAgent.user_id == user.id))).all())
    await bump_config_version(session, inbox_ids)
    await session.delete(user)
    await session.commit()
    runtime.principals.invalidate()  # the user's tokens are refused from the next call here
    await runtime.routing.agent_deleted(ctx.org.id, user_id, inbox_ids)
    return Response(status_code=204)


__all__ = ["add_user", "router"]
