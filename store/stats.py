"""Contact-center statistics of an inbox, computed from the store (the single truth), never from actors.

Names as contact centers use them. Over a window ending now:
- a *contact* is a conversation that entered the inbox's queue in the window (its `queued` event);
- *answered*: an agent accepted or claimed it; its answer time is from `queued` to that first accept/claim;
- *abandoned*: closed while waiting, never answered;
- *service level* = answered within the inbox's threshold / (answered + abandoned);
- *average speed of answer* (ASA): mean answer time of the answered contacts;
- *average handle time* (AHT): mean time from assignment to close of conversations closed in the window;
- offers made, accepted, declined and missed count the audit trail's events in the window.
Right now: contacts in queue (queued or offered) and the oldest one's age; the inbox's agents as one of
on contact (handling at least one conversation, in any inbox), available, away or offline.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.tables import AgentState, Inbox, InboxAgent, Transaction, TransactionEvent

OFFER_KINDS = ("offered", "accepted", "declined", "missed")
ANSWER_KINDS = ("accepted", "claimed")
WAITING_STATES = ("queued", "offered")


@dataclass
class InboxStats:
    inbox_id: int
    name: str
    service_level_threshold_s: int
    contacts_in_queue: int = 0
    oldest_contact_age_s: float | None = None
    agents_on_contact: int = 0
    agents_available: int = 0
    agents_away: int = 0
    agents_offline: int = 0
    contacts: int = 0
    answered: int = 0
    answered_within_threshold: int = 0
    abandoned: int = 0
    offers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OFFER_KINDS, 0))
    # Sums behind the averages, so an organization's figures are weighted by contacts, not by inbox.
    answer_seconds: float = 0.0
    handled: int = 0
    handle_seconds: float = 0.0

    @property
    def service_level(self) -> float | None:
        offered = self.answered + self.abandoned
        return None if offered == 0 else self.answered_within_threshold / offered

    @property
    def average_speed_of_answer_s(self) -> float | None:
        return None if self.answered == 0 else self.answer_seconds / self.answered

    @property
    def average_handle_time_s(self) -> float | None:
        return None if self.handled == 0 else self.handle_seconds / self.handled


async def inbox_stats(session: AsyncSession, inboxes: list[Inbox], now: datetime, window_s: int) -> list[InboxStats]:
    """Statistics of `inboxes` (one organization's) over the `window_s` seconds before `now`."""
    since = now - timedelta(seconds=window_s)
    stats = {i.id: InboxStats(i.id, i.name, i.service_level_threshold_s) for i in inboxes}
    if not stats:
        return []
    ids = list(stats)

    waiting = (await session.execute(
        select(Transaction.inbox_id, func.count(), func.min(Transaction.waiting_since))
        .where(Transaction.inbox_id.in_(ids), Transaction.state.in_(WAITING_STATES))
        .group_by(Transaction.inbox_id))).all()
    for inbox_id, count, oldest in waiting:
        stats[inbox_id].contacts_in_queue = count
        stats[inbox_id].oldest_contact_age_s = max(0.0, (now - oldest).total_seconds()) if oldest else None

    await _agents(session, stats)

    # Every event of the window, in order: offers counted, contacts followed from queued to answered/closed.
    events = (await session.execute(
        select(Transaction.inbox_id, TransactionEvent.transaction_id, TransactionEvent.kind, TransactionEvent.at)
        .join(Transaction, Transaction.id == TransactionEvent.transaction_id)
        .where(Transaction.inbox_id.in_(ids), TransactionEvent.at >= since)
        .order_by(TransactionEvent.id))).all()
    contacts: dict[int, dict[str, Any]] = {}
    for inbox_id, tx_id, kind, at in events:
        entry = stats[inbox_id]
        if kind in entry.offers:
            entry.offers[kind] += 1
        if kind == "queued" and tx_id not in contacts:
            contacts[tx_id] = {"inbox": inbox_id, "queued": at, "answered": None, "closed": False}
        contact = contacts.get(tx_id)
        if contact is None:
            continue
        if kind in ANSWER_KINDS and contact["answered"] is None:
            contact["answered"] = at
        elif kind == "closed" and contact["answered"] is None:
            contact["closed"] = True
    for contact in contacts.values():
        entry = stats[contact["inbox"]]
        entry.contacts += 1
        if contact["answered"] is not None:
            seconds = max(0.0, (contact["answered"] - contact["queued"]).total_seconds())
            entry.answered += 1
            entry.answer_seconds += seconds
            entry.answered_within_threshold += seconds <= entry.service_level_threshold_s
        elif contact["closed"]:
            entry.abandoned += 1

    handled = (await session.execute(
        select(Transaction.inbox_id, Transaction.assigned_at, Transaction.closed_at)
        .where(Transaction.inbox_id.in_(ids), Transaction.state == "closed", Transaction.closed_at >= since,
               Transaction.agent_id.is_not(None), Transaction.assigned_at.is_not(None)))).all()
    for inbox_id, assigned_at, closed_at in handled:
        if assigned_at is None or closed_at is None:  # excluded by the query; typed as optional
            continue
        stats[inbox_id].handled += 1
        stats[inbox_id].handle_seconds += max(0.0, (closed_at - assigned_at).total_seconds())
    return [stats[i] for i in ids]


async def _agents(session: AsyncSession, stats: dict[int, InboxStats]) -> None:
    members = (await session.execute(
        select(InboxAgent.inbox_id, InboxAgent.user_id, AgentState.status)
        .outerjoin(AgentState, AgentState.user_id == InboxAgent.user_id)
        .where(InboxAgent.inbox_id.in_(list(stats))))).all()
    users = {user_id for _, user_id, _ in members}
    busy = set((await session.scalars(
        select(Transaction.agent_id).where(Transaction.agent_id.in_(users), Transaction.state == "assigned")
        .distinct())).all()) if users else set()
    for inbox_id, user_id, status in members:
        entry = stats[inbox_id]
        if user_id in busy:
            entry.agents_on_contact += 1
        elif status == "available":
            entry.agents_available += 1
        elif status == "away":
            entry.agents_away += 1
        else:  # no state row yet: never went online
            entry.agents_offline += 1


def organization_totals(inboxes: list[InboxStats], agents: dict[str, int]) -> dict[str, Any]:
    """An organization's figures: contacts summed over its inboxes, averages weighted by contacts;
    agents counted once each (`agents`), however many inboxes they serve."""
    total = InboxStats(0, "", 0)
    for s in inboxes:
        total.contacts_in_queue += s.contacts_in_queue
        if s.oldest_contact_age_s is not None:
            total.oldest_contact_age_s = max(total.oldest_contact_age_s or 0.0, s.oldest_contact_age_s)
        for name in ("contacts", "answered", "answered_within_threshold", "abandoned", "answer_seconds", "handled",
                     "handle_seconds"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        for kind in OFFER_KINDS:
            total.offers[kind] += s.offers[kind]
    return {"contacts_in_queue": total.contacts_in_queue, "oldest_contact_age_s": total.oldest_contact_age_s,
            **agents, **window_figures(total)}


def window_figures(s: InboxStats) -> dict[str, Any]:
    return {
        "contacts": s.contacts, "answered": s.answered, "answered_within_threshold": s.answered_within_threshold,
        "abandoned": s.abandoned, "service_level": s.service_level,
        "average_speed_of_answer_s": s.average_speed_of_answer_s, "average_handle_time_s": s.average_handle_time_s,
        "offers_made": s.offers["offered"], "offers_accepted": s.offers["accepted"],
        "offers_declined": s.offers["declined"], "offers_missed": s.offers["missed"],
    }


async def organization_agents(session: AsyncSession, org_id: int) -> dict[str, int]:
    """The organization's inbox agents, each counted once: on contact, available, away or offline."""
    rows = (await session.execute(
        select(InboxAgent.user_id, AgentState.status)
        .join(Inbox, Inbox.id == InboxAgent.inbox_id)
        .outerjoin(AgentState, AgentState.user_id == InboxAgent.user_id)
        .where(Inbox.org_id == org_id).distinct())).all()
    busy = set((await session.scalars(
        select(Transaction.agent_id).where(Transaction.org_id == org_id, Transaction.state == "assigned")
        .distinct())).all())
    counts: dict[str, int] = defaultdict(int)
    for user_id, status in rows:
        bucket = "on_contact" if user_id in busy else status if status in ("available", "away") else "offline"
        counts[bucket] += 1
    return {f"agents_{b}": counts[b] for b in ("on_contact", "available", "away", "offline")}
