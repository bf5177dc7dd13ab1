"""Platform chores run against the store directly (the CLI's `admin` commands): no gateway needed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from config.models import OrganizationCreate, Role
from config.settings import Settings
from gateway.bootstrap import rotate_admin_token
from gateway.deployment import DeploymentConflict, check_free
from gateway.errors import ApiError
from gateway.routers.users import add_user
from gateway.security import hash_token, new_token, new_verify_token
from store.crypto import SecretBox, parse_keys
from store.db import Database
from store.key_rotation import add_new_key, reencrypt_secrets
from store.migrate import upgrade_to_head_async
from store.tables import ApiToken, Organization, User


class AdminError(Exception):
    """A refusal to show as one line."""


@dataclass(frozen=True)
class OrgRow:
    id: int
    name: str
    users: int
    created_at: datetime


async def _database(settings: Settings) -> Database:
    await upgrade_to_head_async(settings.database_url)
    return Database(settings.database_url, pool_size=1)


async def create_organization(settings: Settings, body: OrganizationCreate) -> tuple[int, int, str]:
    """(organization id, owner id, owner token) of a new organization with its owner."""
    db = await _database(settings)
    try:
        async with db.sessions() as session:
            org = Organization(name=body.name, webhook_verify_token=new_verify_token())
            session.add(org)
            await session.flush()
            try:
                owner, token = await add_user(session, org.id, name=body.owner.name, email=body.owner.email,
                                              role=Role.owner, licenses=body.owner.licenses)
            except ApiError as exc:
                raise AdminError(exc.message) from exc
            await session.commit()
            return org.id, owner.id, token
    finally:
        await db.dispose()


async def issue_user_token(settings: Settings, user_id: int) -> tuple[str, str, int]:
    """A new API token for a user (their earlier tokens stay valid): (user name, token, org id)."""
    db = await _database(settings)
    try:
        async with db.sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise AdminError(f"user {user_id} not found")
            token = new_token()
            session.add(ApiToken(token_hash=hash_token(token), user_id=user.id))
            await session.commit()
            return user.name, token, user.org_id
    finally:
        await db.dispose()


async def rotate_admin(settings: Settings) -> str:
    db = await _database(settings)
    try:
        return await rotate_admin_token(db)
    finally:
        await db.dispose()


async def list_organizations(settings: Settings) -> list[OrgRow]:
    db = await _database(settings)
    try:
        async with db.sessions() as session:
            users = (select(User.org_id, func.count().label("n")).group_by(User.org_id)).subquery()
            rows = (await session.execute(
                select(Organization, users.c.n).outerjoin(users, users.c.org_id == Organization.id)
                .order_by(Organization.id))).all()
            return [OrgRow(id=o.id, name=o.name, users=int(n or 0), created_at=o.created_at) for o, n in rows]
    finally:
        await db.dispose()


async def rotate_secret_key(settings: Settings) -> str:
    """A new encryption key, and every stored secret encrypted with it (see `store.key_rotation`)."""
    db = await _database(settings)
    try:
        # Every gateway stopped: one still running with the old key alone could not read the new secrets.
        try:
            await check_free(db, None, settings.deployment_lease_s)
        except DeploymentConflict as exc:
            raise AdminError(str(exc)) from exc
        if settings.secret_key:
            keys = parse_keys(settings.secret_key.encode())
            if len(keys) < 2:
                raise AdminError(
                    "WA_ROUTER_SECRET_KEY holds one key: set it to '<new key>,<current key>' (a new key: python "
                    "-c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') and run "
                    "this again; then the current key may be removed from it")
            where = "WA_ROUTER_SECRET_KEY"
        else:
            keys = add_new_key(settings.secret_key_file)
            where = str(settings.secret_key_file)
        done = await reencrypt_secrets(db, SecretBox(b",".join(keys)))
        return (f"{done} WhatsApp account(s) encrypted with the new key (first in {where}); the earlier "
                "key(s) after it only decrypt and may be removed once no backup needs them")
    finally:
        await db.dispose()
