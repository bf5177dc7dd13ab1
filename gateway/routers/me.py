"""Who the caller is: what a client (the web console) needs to pick its screens after a login."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.deps import PrincipalDep, SessionDep
from gateway.errors import ApiError
from gateway.routers.orgs import organization_out
from gateway.schemas import OrganizationOut, UserOut
from store.tables import Organization, User

router = APIRouter(prefix="/v1", tags=["organizations"])


class MeOut(BaseModel):
    platform_admin: bool
    # None for the platform admin, who belongs to no organization.
    user: UserOut | None
    org: OrganizationOut | None


@router.get("/me", response_model=MeOut)
async def who_am_i(principal: PrincipalDep, session: SessionDep) -> MeOut:
    """Who the bearer token stands for: the user with their role, licences and organization, or the platform
    admin.
    """
    if principal.user is None:
        return MeOut(platform_admin=True, user=None, org=None)
    # The principal is a cached snapshot; the user's row has their name and email.
    user = await session.get(User, principal.user.id)
    org = await session.get(Organization, principal.user.org_id)
    if user is None or org is None:
        raise ApiError(401, "invalid bearer token")
    return MeOut(platform_admin=False, user=UserOut.of(user), org=organization_out(org))
