"""An inbox's configuration as its actor loads it, and the actor's ownership of the inbox: the epoch it takes on
activation and the fence every one of its commits passes first, so an older activation's writes are refused."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from config.licenses import holds_agent_licenses
from store.tables import InboundMessage, Inbox, InboxAgent, User


@dataclass
class InboxConfig:
    org_id: int
    name: str
    mode: str
    reassign_after_s: int
    dials_per_agent: int
    rotation_pointer: int | None
    config_version: int = 0
    # user_id -> (proficiency, licensed)
    members: dict[int, tuple[int, bool]] = field(default_factory=dict)


async def load_inbox_config(session: AsyncSession, inbox_id: int) -> InboxConfig | None:
    inbox = await session.get(Inbox, inbox_id)
    if inbox is None:
        return None
    rows = (await session.execute(
        select(InboxAgent.user_id, InboxAgent.proficiency, User.licenses)
        .join(User, User.id == InboxAgent.user_id).where(InboxAgent.inbox_id == inbox_id)
    )).all()
    return InboxConfig(
        org_id=inbox.org_id, name=inbox.name, mode=inbox.assignment_mode,
        reassign_after_s=inbox.reassign_after_s, dials_per_agent=inbox.dials_per_agent,
        rotation_pointer=inbox.rotation_pointer, config_version=inbox.config_version,
        members={user_id: (proficiency, holds_agent_licenses(licenses)) for user_id, proficiency, licenses in rows},
    )


class Fenced(Exception):
    """The inbox was activated elsewhere since this owner took it: its writes are refused."""


async def take_inbox_ownership(session: AsyncSession, inbox_id: int) -> int | None:
    """The next fencing epoch of the inbox (None when it no longer exists)."""
    return await session.scalar(update(Inbox).where(Inbox.id == inbox_id)
                                .values(owner_epoch=Inbox.owner_epoch + 1).returning(Inbox.owner_epoch))


# Statements every inbox step runs are built once: a statement object keeps its cache key, so running it
# again neither builds nor keys it.
# (bindparam names differ from the columns': SQLAlchemy reserves those of an UPDATE's SET clause.)
_FENCE = (update(Inbox).where(Inbox.id == bindparam("inbox"), Inbox.owner_epoch == bindparam("epoch"))
          .values(owner_epoch=bindparam("epoch")).returning(Inbox.config_version))
_FENCE_AND_POINT = _FENCE.values(rotation_pointer=bindparam("pointer"))


def fence(connection: Connection, inbox_id: int, epoch: int, rotation_pointer: int | None = None) -> int:
    """First statement of every write of an inbox's owner: refuses a stale owner, answers the config version.

    An update rather than a read, so the row stays locked (PostgreSQL) until the commit and a newer owner cannot
    slip in between the check and the write. `rotation_pointer`: the step's new rotation pointer, written on the
    same row by the same statement (one statement less for a routing pass).
    """
    if rotation_pointer is None:
        row = connection.execute(_FENCE, {"inbox": inbox_id, "epoch": epoch})
    else:
        row = connection.execute(_FENCE_AND_POINT, {"inbox": inbox_id, "epoch": epoch, "pointer": rotation_pointer})
    version = row.scalar_one_or_none()
    if version is None:
        raise Fenced(f"inbox {inbox_id} is owned by a newer activation than epoch {epoch}")
    return int(version)


async def inboxes_watched(session: AsyncSession) -> list[tuple[int, int, int, int, int | None]]:
    """(org id, inbox id, configuration version, owner epoch, oldest unattached message id or None) of every inbox:
    a gateway's sweep (`actors.inbox_sweep`), one query for the whole deployment."""
    oldest = (select(func.min(InboundMessage.id))
              .where(InboundMessage.inbox_id == Inbox.id, InboundMessage.transaction_id.is_(None))
              .correlate(Inbox).scalar_subquery())
    rows = (await session.execute(
        select(Inbox.org_id, Inbox.id, Inbox.config_version, Inbox.owner_epoch, oldest).order_by(Inbox.id))).all()
    return [(int(org), int(inbox), int(version), int(epoch), None if first is None else int(first))
            for org, inbox, version, epoch, first in rows]


async def bump_config_version(session: AsyncSession, inbox_ids: Iterable[int]) -> None:
    """In the same transaction as a configuration write: the inboxes' actors reload even if not told."""
    ids = sorted(set(inbox_ids))
    if ids:
        await session.execute(update(Inbox).where(Inbox.id.in_(ids)).values(config_version=Inbox.config_version + 1))
