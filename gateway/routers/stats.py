"""Supervisor statistics over HTTP: an inbox's and an organization's contact-center figures (`store/stats.py`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from gateway.deps import InboxId, SessionDep, Supervisor
from gateway.routers.inboxes import get_inbox
from store.stats import InboxStats, inbox_stats, organization_agents, organization_totals, window_figures
from store.tables import Inbox
from store.types import utcnow

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["statistics"])

DAY_S = 24 * 3600
WindowS = Annotated[int, Query(ge=60, le=31 * DAY_S,
                               description="The figures over contacts of this many seconds before now (default a day)")]


class WindowFigures(BaseModel):
    window_s: int
    contacts: int = Field(description="Conversations that entered the queue in the window")
    answered: int = Field(description="Of those, accepted or claimed by an agent")
    answered_within_threshold: int
    abandoned: int = Field(description="Of those, closed while waiting, never answered")
    service_level: float | None = Field(description="answered within the threshold / (answered + abandoned)")
    average_speed_of_answer_s: float | None = Field(description="Mean time from queued to answered")
    average_handle_time_s: float | None = Field(description="Mean time from assignment to close, closed in window")
    offers_made: int
    offers_accepted: int
    offers_declined: int
    offers_missed: int


class NowFigures(BaseModel):
    contacts_in_queue: int = Field(description="Waiting now: queued or offered")
    oldest_contact_age_s: float | None
    agents_on_contact: int = Field(description="Handling at least one conversation (in any inbox)")
    agents_available: int
    agents_away: int
    agents_offline: int


class InboxStatsOut(NowFigures, WindowFigures):
    inbox_id: int
    name: str
    service_level_threshold_s: int


class OrgStatsOut(NowFigures, WindowFigures):
    org_id: int
    inboxes: list[InboxStatsOut]


def inbox_out(s: InboxStats, window_s: int) -> InboxStatsOut:
    return InboxStatsOut(
        inbox_id=s.inbox_id, name=s.name, service_level_threshold_s=s.service_level_threshold_s, window_s=window_s,
        contacts_in_queue=s.contacts_in_queue, oldest_contact_age_s=s.oldest_contact_age_s,
        agents_on_contact=s.agents_on_contact, agents_available=s.agents_available, agents_away=s.agents_away,
        agents_offline=s.agents_offline, **window_figures(s))


@router.get("/inboxes/{inbox_id}/stats", response_model=InboxStatsOut)
async def read_inbox_stats(inbox_id: InboxId, ctx: Supervisor, session: SessionDep,
                           window_s: WindowS = DAY_S) -> InboxStatsOut:
    """Contact-center figures of one inbox over `window_s` (default a day): queue now, agents by state, contacts,
    service level, average speed of answer and handle time, offers. Supervisors.
    """
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    (stats,) = await inbox_stats(session, [inbox], utcnow(), window_s)
    return inbox_out(stats, window_s)


@router.get("/stats", response_model=OrgStatsOut)
async def read_org_stats(ctx: Supervisor, session: SessionDep, window_s: WindowS = DAY_S) -> OrgStatsOut:
    """The organization's figures over `window_s`: its inboxes summed (averages weighted by contacts, agents
    counted once), each inbox listed. Supervisors.
    """
    inboxes = list((await session.scalars(select(Inbox).where(Inbox.org_id == ctx.org.id).order_by(Inbox.id))).all())
    per_inbox = await inbox_stats(session, inboxes, utcnow(), window_s)
    totals = organization_totals(per_inbox, await organization_agents(session, ctx.org.id))
    return OrgStatsOut(org_id=ctx.org.id, window_s=window_s, inboxes=[inbox_out(s, window_s) for s in per_inbox],
                       **totals)
