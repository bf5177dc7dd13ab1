"""Inboxes: one WhatsApp number each, an assignment mode and the agents who serve it."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from config.models import InboxAgentIn, InboxCreate, InboxUpdate, holds_agent_licenses, missing_agent_license
from gateway.deps import ConfigSupervisor, InboxId, OrgMember, RuntimeDep, SessionDep
from gateway.errors import conflict, field_error, forbidden, not_found
from gateway.paging import MAX_LIMIT, Page, Paging
from gateway.schemas import AgentCandidateOut, InboxAgentOut, InboxOut
from store.tables import Inbox, InboxAgent, PhoneNumber, Transaction, User, WhatsAppAccount
from store.types import utcnow

router = APIRouter(prefix="/v1/orgs/{org_id}/inboxes", tags=["inboxes"])


async def inbox_out(session: AsyncSession, inbox: Inbox) -> InboxOut:
    agents = (await session.execute(
        select(InboxAgent, User.name).join(User, User.id == InboxAgent.user_id)
        .where(InboxAgent.inbox_id == inbox.id).order_by(InboxAgent.user_id)
    )).all()
    display = await session.scalar(
        select(PhoneNumber.display_phone_number).where(PhoneNumber.phone_number_id == inbox.phone_number_id)
    )
    return InboxOut(
        id=inbox.id, org_id=inbox.org_id, name=inbox.name, type=inbox.type,
        phone_number_id=inbox.phone_number_id, display_phone_number=display,
        assignment_mode=inbox.assignment_mode, reassign_after_s=inbox.reassign_after_s,
        dials_per_agent=inbox.dials_per_agent, service_level_threshold_s=inbox.service_level_threshold_s,
        agents=[InboxAgentOut(user_id=a.user_id, name=name, proficiency=a.proficiency) for a, name in agents],
        created_at=inbox.created_at, updated_at=inbox.updated_at,
    )


async def get_inbox(session: AsyncSession, org_id: int, inbox_id: int) -> Inbox:
    inbox = await session.get(Inbox, inbox_id)
    if inbox is None or inbox.org_id != org_id:
        raise not_found("inbox")
    return inbox


async def _check_number(session: AsyncSession, org_id: int, phone_number_id: str, inbox_id: int | None) -> None:
    linked = await session.scalar(
        select(PhoneNumber.phone_number_id)
        .join(WhatsAppAccount, WhatsAppAccount.waba_id == PhoneNumber.waba_id)
        .where(WhatsAppAccount.org_id == org_id, PhoneNumber.phone_number_id == phone_number_id)
    )
    if linked is None:
        raise field_error(("body", "phone_number_id"),
                          f"{phone_number_id} is not a number of a WhatsApp account linked to this organization")
    used_by = await session.scalar(select(Inbox.id).where(Inbox.phone_number_id == phone_number_id))
    if used_by is not None and used_by != inbox_id:
        raise _number_taken(phone_number_id)


def _number_taken(phone_number_id: str) -> Exception:
    return conflict(f"phone number {phone_number_id} is already used by another inbox")


async def _check_agents(session: AsyncSession, org_id: int, agents: Sequence[InboxAgentIn]) -> None:
    if not agents:
        return
    users = {u.id: u for u in (await session.scalars(
        select(User).where(User.org_id == org_id, User.id.in_([a.user_id for a in agents]))
    )).all()}
    for index, agent in enumerate(agents):
        user = users.get(agent.user_id)
        if user is None:
            raise field_error(("body", "agents", index, "user_id"),
                              f"user {agent.user_id} not found in this organization")
        missing = missing_agent_license(user.licenses)
        if missing is not None:
            raise field_error(
                ("body", "agents", index, "user_id"),
                f"user {user.id} ({user.name}) lacks the {missing.value} licence needed to be an inbox agent",
            )


async def _replace_agents(session: AsyncSession, inbox_id: int, agents: Sequence[InboxAgentIn]) -> None:
    await session.execute(delete(InboxAgent).where(InboxAgent.inbox_id == inbox_id))
    session.add_all([InboxAgent(inbox_id=inbox_id, user_id=a.user_id, proficiency=a.proficiency) for a in agents])


@router.get("/agent-candidates", response_model=Page[AgentCandidateOut])
async def list_agent_candidates(ctx: ConfigSupervisor, session: SessionDep,
                                paging: Paging) -> Page[AgentCandidateOut]:
    """Users who may be inbox agents, oldest first (by id)."""
    after = paging.after([int])
    last_id = after[0] if after is not None else 0
    found: list[User] = []
    # Licences are a JSON list the SQL backends query differently: filter here, a batch at a time.
    while len(found) <= paging.limit:
        batch = (await session.scalars(select(User).where(User.org_id == ctx.org.id, User.id > last_id)
                                       .order_by(User.id).limit(MAX_LIMIT))).all()
        if not batch:
            break
        found += [u for u in batch if holds_agent_licenses(u.licenses)]
        last_id = batch[-1].id
    return paging.page(found[: paging.limit + 1], lambda u: (u.id,), lambda u: AgentCandidateOut(
        user_id=u.id, name=u.name, email=u.email, role=u.role))


@router.post("", status_code=201, response_model=InboxOut)
async def create_inbox(body: InboxCreate, ctx: ConfigSupervisor, session: SessionDep,
                       runtime: RuntimeDep) -> InboxOut:
    """Create an inbox on a linked number with its assignment mode, timers and agents; its routing actor starts
    at once. Supervisors with Contact Center; a number used by an inbox anywhere is a 409.
    """
    await _check_number(session, ctx.org.id, body.phone_number_id, None)
    await _check_agents(session, ctx.org.id, body.agents)
    inbox = Inbox(org_id=ctx.org.id, name=body.name, type=body.type, phone_number_id=body.phone_number_id,
                  assignment_mode=body.assignment_mode.value, reassign_after_s=body.reassign_after_s,
                  dials_per_agent=body.dials_per_agent, service_level_threshold_s=body.service_level_threshold_s)
    session.add(inbox)
    try:
        await session.flush()
    except IntegrityError as exc:  # another organization (or request) took the number meanwhile
        raise _number_taken(body.phone_number_id) from exc
    await _replace_agents(session, inbox.id, body.agents)
    await session.commit()
    # Answered once the inbox's actor runs: its first customer is routed without a process start.
    await runtime.routing.inbox_created(ctx.org.id, inbox.id)
    return await inbox_out(session, inbox)


@router.get("", response_model=Page[InboxOut])
async def list_inboxes(ctx: OrgMember, session: SessionDep, paging: Paging) -> Page[InboxOut]:
    """Oldest first (by id). Agents see the inboxes they serve."""
    query = select(Inbox).where(Inbox.org_id == ctx.org.id)
    if not ctx.is_supervisor and ctx.user is not None:
        query = query.join(InboxAgent, InboxAgent.inbox_id == Inbox.id).where(InboxAgent.user_id == ctx.user.id)
    inboxes = (await session.scalars(paging.oldest_first(query, Inbox.id))).all()
    shown = {inbox.id: await inbox_out(session, inbox) for inbox in inboxes[: paging.limit]}
    return paging.page(inboxes, lambda i: (i.id,), lambda i: shown[i.id])


@router.get("/{inbox_id}", response_model=InboxOut)
async def read_inbox(inbox_id: InboxId, ctx: OrgMember, session: SessionDep) -> InboxOut:
    """One inbox with its settings and agents. Supervisors and the inbox's agents."""
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    if not ctx.is_supervisor and ctx.user is not None:
        member = await session.get(InboxAgent, (inbox_id, ctx.user.id))
        if member is None:
            raise forbidden("only supervisors and the inbox's agents may read it")
    return await inbox_out(session, inbox)


@router.patch("/{inbox_id}", response_model=InboxOut)
async def update_inbox(inbox_id: InboxId, body: InboxUpdate, ctx: ConfigSupervisor, session: SessionDep,
                       runtime: RuntimeDep) -> InboxOut:
    """Change any of the inbox's settings or agents; applied live, without losing queued or offered
    conversations. Supervisors with Contact Center.
    """
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    if body.phone_number_id is not None and body.phone_number_id != inbox.phone_number_id:
        await _check_number(session, ctx.org.id, body.phone_number_id, inbox.id)
        inbox.phone_number_id = body.phone_number_id
    if body.agents is not None:
        await _check_agents(session, ctx.org.id, body.agents)
        await _replace_agents(session, inbox.id, body.agents)
    for name in ("name", "reassign_after_s", "dials_per_agent", "service_level_threshold_s"):
        value = getattr(body, name)
        if value is not None:
            setattr(inbox, name, value)
    if body.assignment_mode is not None:
        inbox.assignment_mode = body.assignment_mode.value
    inbox.updated_at = utcnow()
    # The live inbox actor reloads on this version even if the notification below never reaches it.
    inbox.config_version = inbox.config_version + 1
    try:
        await session.commit()
    except IntegrityError as exc:
        raise _number_taken(body.phone_number_id or inbox.phone_number_id) from exc
    # Live: the inbox actor reloads its configuration and routes what is waiting.
    await runtime.routing.inboxes_changed(ctx.org.id, [inbox.id])
    return await inbox_out(session, inbox)


@router.delete("/{inbox_id}", status_code=204)
async def delete_inbox(inbox_id: InboxId, ctx: ConfigSupervisor, session: SessionDep, runtime: RuntimeDep) -> Response:
    """Delete the inbox (409 while it has open conversations). Supervisors with Contact Center."""
    inbox = await get_inbox(session, ctx.org.id, inbox_id)
    open_count = await session.scalar(
        select(func.count()).select_from(Transaction)
        .where(Transaction.inbox_id == inbox.id, Transaction.state != "closed")
    )
    if open_count:
        raise conflict(f"inbox {inbox.id} has {open_count} open transaction(s); close or transfer them first")
    await session.delete(inbox)
    await session.commit()
    await runtime.routing.inbox_deleted(ctx.org.id, inbox_id)
    return Response(status_code=204)
