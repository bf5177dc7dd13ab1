"""The outbound outbox and delivery statuses: enqueueing, the sender's transitions, monotonic statuses.

Every transition is one conditional UPDATE, so concurrent webhooks (Meta's duplicates arrive in
parallel) and a sender racing a status webhook can never move a message's state backwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.tables import MessageStatus, OutboundMessage
from store.types import storable, utcnow

# Progress of a delivery; `failed` stands apart (it wins over earlier steps only when newer).
PROGRESS = {"queued": 0, "sending": 0, "accepted": 1, "sent": 2, "delivered": 3, "read": 4, "played": 5}
DELIVERY_STATUSES = frozenset({"sent", "delivered", "read", "played", "failed"})
# States the sender still has to act on.
PENDING_STATES = ("queued", "sending")


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def status_applies(current: str, current_at: datetime | None, status: str, at: datetime) -> bool:
    """Whether a status webhook moves the message forward (the rule `_applies_sql` enforces in SQL).

    Progress only climbs (sent < delivered < read < played), whatever order the webhooks come in.
    `failed` replaces an earlier step when it is newer by Meta's timestamp (or as new, before
    delivery); a progress status newer than a failure replaces it (Meta retried and delivered).
    """
    if status == "failed":
        if current == "failed":
            return False
        if current_at is None:
            return True
        return at > current_at or (PROGRESS.get(current, 0) < PROGRESS["delivered"] and at >= current_at)
    if current == "failed":
        return current_at is None or at > current_at
    return PROGRESS.get(status, 0) > PROGRESS.get(current, 0)


def _rank_sql() -> ColumnElement[int]:
    return case(*((OutboundMessage.state == name, rank) for name, rank in PROGRESS.items()), else_=0)


def _applies_sql(status: str, at: datetime) -> ColumnElement[bool]:
    state, status_at = OutboundMessage.state, OutboundMessage.status_at
    if status == "failed":
        return and_(state != "failed", or_(
            status_at.is_(None), status_at < at, and_(_rank_sql() < PROGRESS["delivered"], status_at <= at)))
    return or_(
        and_(state == "failed", or_(status_at.is_(None), status_at < at)),
        and_(state != "failed", _rank_sql() < PROGRESS[status]),
    )


@dataclass(frozen=True)
class StatusChange:
    """An outbound message whose delivery status moved: what the agent's `message_status` event says."""

    outbound_id: int
    org_id: int
    agent_id: int | None
    transaction_id: int | None
    wamid: str
    status: str
    at: datetime
    error: dict[str, Any] | None

    def event(self) -> dict[str, Any]:
        return {"transaction_id": self.transaction_id, "message_id": self.outbound_id, "wamid": self.wamid,
                "status": self.status, "status_at": self.at.isoformat(), "error": self.error}


def _first_error(errors: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    if not errors:
        return None
    error = errors[0]
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    code = error.get("code")
    return {"code": int(code) if isinstance(code, int | str) and str(code).isdigit() and len(str(code)) < 10
            else None,
            "title": storable(str(error.get("title") or error.get("message") or "")),
            "details": storable(details) if isinstance(details, str) else None}


async def apply_status(session: AsyncSession, org_ids: Iterable[int], wamid: str, status: str, at: datetime,
                       errors: Sequence[dict[str, Any]] = ()) -> StatusChange | None:
    """Apply one delivery status to the outbound message `wamid` of one of `org_ids`, if it moves it."""
    orgs = list(org_ids)
    if status not in DELIVERY_STATUSES or not orgs or not wamid or "\x00" in wamid:
        return None
    values: dict[str, Any] = {"state": status, "status_at": at, "updated_at": utcnow()}
    error = _first_error(errors) if status == "failed" else None
    if status == "failed":
        error = error or {"code": None, "title": "failed", "details": None}
        values.update(error_code=error["code"], error_title=error["title"], error_details=error["details"])
    row = (await session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.wamid == wamid, OutboundMessage.org_id.in_(orgs), _applies_sql(status, at))
        .values(**values)
        .returning(OutboundMessage.id, OutboundMessage.org_id, OutboundMessage.agent_id,
                   OutboundMessage.transaction_id)
    )).first()
    if row is None:
        return None
    return StatusChange(outbound_id=row[0], org_id=row[1], agent_id=row[2], transaction_id=row[3], wamid=wamid,
                        status=status, at=at, error=error)


async def mark_sending(session: AsyncSession, outbound_id: int) -> OutboundMessage | None:
    """Claim a pending message for one attempt (counted); None when it is no longer pending."""
    row = (await session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == outbound_id, OutboundMessage.state.in_(PENDING_STATES))
        .values(state="sending", attempts=OutboundMessage.attempts + 1, updated_at=utcnow())
        .returning(OutboundMessage.id)
    )).first()
    if row is None:
        return None
    return await session.get(OutboundMessage, outbound_id, populate_existing=True)


async def mark_accepted(session: AsyncSession, outbound_id: int, wamid: str) -> list[StatusChange]:
    """Meta accepted it: store the wamid, then apply statuses that arrived before we knew the wamid."""
    now = utcnow()
    row = (await session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == outbound_id, OutboundMessage.state.in_(PENDING_STATES))
        .values(state="accepted", wamid=wamid, status_at=None, updated_at=now, error_code=None,
                error_title=None, error_details=None)
        .returning(OutboundMessage.org_id)
    )).first()
    if row is None:
        return []
    early = (await session.execute(
        select(MessageStatus.status, MessageStatus.occurred_at, MessageStatus.errors)
        # By wamid alone: Meta's ids are unique, and a status may have reached another linked org's endpoint.
        .where(MessageStatus.wamid == wamid)
        .order_by(MessageStatus.occurred_at, MessageStatus.id)
    )).all()
    changes = []
    for status, at, errors in early:
        change = await apply_status(session, [row[0]], wamid, status, at, errors or [])
        if change is not None:
            changes.append(change)
    return changes


async def apply_parked_statuses(session: AsyncSession, phone_number_id: str, since: datetime) -> list[StatusChange]:
    """Statuses stored but never applied to the number's messages accepted or moved since `since`: applied now.

    On PostgreSQL a status webhook and the sender's `mark_accepted` can run at once and miss each other: the
    webhook's UPDATE finds no message with the wamid (its wamid is not committed yet) and `mark_accepted`'s
    read does not see the status (not committed yet either), so the status stays parked for good. The
    sender's poll closes that gap with this pass (the same conditional UPDATE: never backwards).
    """
    rows = (await session.execute(
        select(OutboundMessage.org_id, OutboundMessage.wamid, OutboundMessage.state, OutboundMessage.status_at,
               MessageStatus.status, MessageStatus.occurred_at, MessageStatus.errors)
        .join(MessageStatus, and_(MessageStatus.org_id == OutboundMessage.org_id,
                                  MessageStatus.wamid == OutboundMessage.wamid))
        .where(OutboundMessage.phone_number_id == phone_number_id,
               OutboundMessage.state.in_(("accepted", "sent", "delivered")),
               OutboundMessage.updated_at >= since)
        .order_by(MessageStatus.occurred_at, MessageStatus.id)
    )).all()
    changes: list[StatusChange] = []
    for org_id, wamid, state, status_at, status, at, errors in rows:
        if wamid and status_applies(state, status_at, status, at):
            change = await apply_status(session, [org_id], wamid, status, at, errors or [])
            if change is not None:
                changes.append(change)
    return changes


async def mark_retry(session: AsyncSession, outbound_id: int, delay_s: float, code: int | None,
                     title: str, details: str | None) -> None:
    """A transient failure: back to the queue until `delay_s` from now, keeping the last error visible."""
    await session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == outbound_id, OutboundMessage.state == "sending")
        .values(state="queued", next_attempt_at=utcnow() + timedelta(seconds=delay_s), error_code=code,
                error_title=title, error_details=details, updated_at=utcnow()))


async def mark_failed(session: AsyncSession, outbound_id: int, code: int | None, title: str,
                      details: str | None) -> StatusChange | None:
    """A permanent failure (Meta's reason kept): never retried."""
    now = utcnow()
    row = (await session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == outbound_id, OutboundMessage.state.in_(PENDING_STATES))
        .values(state="failed", status_at=now, error_code=code, error_title=title, error_details=details,
                updated_at=now)
        .returning(OutboundMessage.org_id, OutboundMessage.agent_id, OutboundMessage.transaction_id)
    )).first()
    if row is None:
        return None
    return StatusChange(outbound_id=outbound_id, org_id=row[0], agent_id=row[1], transaction_id=row[2], wamid="",
                        status="failed", at=now, error={"code": code, "title": title, "details": details})


async def pending_for_number(session: AsyncSession, phone_number_id: str,
                             after_id: int = 0) -> list[tuple[int, str, datetime, int]]:
    """(id, recipient, next attempt, organization) of the number's messages still to send, oldest first."""
    rows = (await session.execute(
        select(OutboundMessage.id, OutboundMessage.to_wa_id, OutboundMessage.to_user_id,
               OutboundMessage.next_attempt_at, OutboundMessage.org_id)
        .where(OutboundMessage.phone_number_id == phone_number_id,
               OutboundMessage.state.in_(PENDING_STATES), OutboundMessage.id > after_id)
        .order_by(OutboundMessage.id)
    )).all()
    return [(row_id, wa_id or user_id or "", at, org_id) for row_id, wa_id, user_id, at, org_id in rows]


async def numbers_with_pending(session: AsyncSession) -> list[str]:
    rows = await session.scalars(select(OutboundMessage.phone_number_id)
                                 .where(OutboundMessage.state.in_(PENDING_STATES)).distinct())
    return list(rows.all())
