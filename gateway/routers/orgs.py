"""Organizations: created by the platform admin together with their first owner."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from config.models import OrganizationCreate, OrganizationUpdate, Role
from gateway.deps import ConfigSupervisor, OrgMember, PlatformAdmin, SessionDep
from gateway.paging import Page, Paging
from gateway.routers.users import add_user
from gateway.schemas import OrganizationCreated, OrganizationOut, OwnerCreated
from gateway.security import new_verify_token
from store.tables import Organization

router = APIRouter(prefix="/v1/orgs", tags=["organizations"])


@router.post("", status_code=201, response_model=OrganizationCreated)
async def create_organization(body: OrganizationCreate, _admin: PlatformAdmin,
                              session: SessionDep) -> OrganizationCreated:
    """Create an organization and its owner; the owner's API token is in the answer, shown once. The platform
    admin.
    """
    org = Organization(name=body.name, webhook_verify_token=new_verify_token())
    session.add(org)
    await session.flush()
    owner, token = await add_user(session, org.id, name=body.owner.name, email=body.owner.email,
                                  role=Role.owner, licenses=body.owner.licenses)
    await session.commit()
    return OrganizationCreated(id=org.id, name=org.name,
                               owner=OwnerCreated(id=owner.id, name=owner.name, email=owner.email, token=token))


@router.get("", response_model=Page[OrganizationOut])
async def list_organizations(_admin: PlatformAdmin, session: SessionDep, paging: Paging) -> Page[OrganizationOut]:
    """Oldest first (by id)."""
    query = select(Organization)
    orgs = (await session.scalars(paging.oldest_first(query, Organization.id))).all()
    return paging.page(orgs, lambda o: (o.id,), organization_out)


def organization_out(org: Organization) -> OrganizationOut:
    return OrganizationOut(id=org.id, name=org.name, created_at=org.created_at,
                           missed_offers_before_away=org.missed_offers_before_away)


@router.get("/{org_id}", response_model=OrganizationOut)
async def get_organization(ctx: OrgMember) -> OrganizationOut:
    """One organization with its settings. Its members and the platform admin."""
    return organization_out(ctx.org)


@router.patch("/{org_id}", response_model=OrganizationOut)
async def update_organization(body: OrganizationUpdate, ctx: ConfigSupervisor, session: SessionDep) -> OrganizationOut:
    """Organization-wide routing settings (supervisors). Agents read them at the next missed offer."""
    org = await session.get(Organization, ctx.org.id)
    assert org is not None
    org.missed_offers_before_away = body.missed_offers_before_away
    await session.commit()
    return organization_out(org)
