"""First-start duties: the platform admin token."""

from __future__ import annotations

from sqlalchemy import delete, select

from gateway.security import hash_token, new_token
from store.db import Database
from store.tables import ApiToken


async def ensure_admin_token(db: Database, configured: str | None) -> str | None:
    """Make the platform admin token usable; return it only when it was generated right now.

    A configured token replaces any earlier admin token. Without one, a token is generated at
    first start and stored hashed, so it can be shown exactly once.
    """
    async with db.session() as session:
        if configured:
            digest = hash_token(configured)
            await session.execute(
                delete(ApiToken).where(ApiToken.user_id.is_(None), ApiToken.token_hash != digest)
            )
            exists = await session.scalar(select(ApiToken.id).where(ApiToken.token_hash == digest))
            if exists is None:
                session.add(ApiToken(token_hash=digest, user_id=None))
            return None
        existing = await session.scalar(select(ApiToken.id).where(ApiToken.user_id.is_(None)).limit(1))
        if existing is not None:
            return None
        token = new_token()
        session.add(ApiToken(token_hash=hash_token(token), user_id=None))
        return token


async def rotate_admin_token(db: Database) -> str:
    """Replace every platform admin token with a new one (the CLI's admin rotate-token)."""
    token = new_token()
    async with db.session() as session:
        await session.execute(delete(ApiToken).where(ApiToken.user_id.is_(None)))
        session.add(ApiToken(token_hash=hash_token(token), user_id=None))
    return token
