"""Typed FastAPI dependencies: the runtime, a store session, the caller and their rights in an org."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from config.models import MAX_ID, SUPERVISOR_CONFIG_LICENSE, Role
from gateway.errors import ApiError, forbidden, not_found, too_many_failures
from gateway.principals import Caller, Principal, resolve_token
from gateway.runtime import Runtime
from store.tables import Organization


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    # Routes commit explicitly; whatever they leave uncommitted (an error) is rolled back here.
    async with runtime.db.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="wa-router API token")


async def get_principal(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing bearer token")
    address = request.client.host if request.client else None
    return await authenticate(runtime, session, credentials.credentials, address)


async def authenticate(runtime: Runtime, session: AsyncSession, token: str, address: str | None) -> Principal:
    """The principal of `token`, or the refusal: 429 for an address that failed too often, else 401."""
    retry_after = runtime.auth_throttle.retry_after(address)
    if retry_after is not None:
        raise too_many_failures(retry_after)
    principal = await resolve_token(session, token, runtime.principals)
    if principal is None:
        runtime.auth_throttle.failed(address)
        raise ApiError(401, "invalid bearer token")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_platform_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_platform_admin:
        raise forbidden("platform admin token required")
    return principal


PlatformAdmin = Annotated[Principal, Depends(require_platform_admin)]


@dataclass(frozen=True)
class OrgAccess:
    """The organization named in the path (its id), and the caller, who is allowed in it."""

    org_id: int
    principal: Principal

    @property
    def user(self) -> Caller | None:
        return self.principal.user

    @property
    def is_supervisor(self) -> bool:
        return self.user is None or Role(self.user.role).is_supervisor

    def is_self(self, user_id: int) -> bool:
        return self.user is not None and self.user.id == user_id


@dataclass(frozen=True)
class OrgContext(OrgAccess):
    """The organization named in the path, as stored, and the caller, who is allowed to see it."""

    org: Organization


def id_path(description: str) -> Any:
    # Store ids are 64-bit: a larger number names nothing and must not reach the driver (it overflows).
    return Path(description=description, ge=1, le=MAX_ID)


def id_query(description: str) -> Any:
    return Query(description=description, ge=1, le=MAX_ID)


OrgId = Annotated[int, id_path("Organization id")]
UserId = Annotated[int, id_path("User id")]
InboxId = Annotated[int, id_path("Inbox id")]
TxId = Annotated[int, id_path("Transaction id")]
InboxFilter = Annotated[int | None, id_query("Only this inbox")]
AgentFilter = Annotated[int | None, id_query("Only this agent")]


async def get_org_access(
    org_id: OrgId,
    principal: PrincipalDep,
    session: SessionDep,
) -> OrgAccess:
    """The organization named in the path and its caller, without reading the organization's row for a member, as
    the agents' actions on conversations need: a member's organization exists (its users belong to it, and
    organizations are never deleted); the platform admin's is looked up."""
    # Another organization's id looks exactly like one that does not exist: no data leaks.
    if principal.user is not None:
        if principal.user.org_id != org_id:
            raise not_found("organization")
    elif await session.get(Organization, org_id) is None:
        raise not_found("organization")
    return OrgAccess(org_id=org_id, principal=principal)


OrgActing = Annotated[OrgAccess, Depends(get_org_access)]


async def get_org_context(access: OrgActing, session: SessionDep) -> OrgContext:
    """`get_org_access` with the organization's row (the platform admin's already in the session: no second read)."""
    org = await session.get(Organization, access.org_id)
    if org is None:
        raise not_found("organization")
    return OrgContext(org_id=access.org_id, principal=access.principal, org=org)


OrgMember = Annotated[OrgContext, Depends(get_org_context)]


async def require_supervisor(ctx: OrgMember) -> OrgContext:
    if not ctx.is_supervisor:
        raise forbidden("supervisor role (owner or admin) required")
    return ctx


Supervisor = Annotated[OrgContext, Depends(require_supervisor)]


async def require_config_supervisor(ctx: Supervisor) -> OrgContext:
    """Omnichannel configuration needs a supervisor holding the Contact Center licence."""
    if ctx.user is not None and SUPERVISOR_CONFIG_LICENSE not in ctx.user.licenses:
        raise forbidden(f"licence {SUPERVISOR_CONFIG_LICENSE.value} required to configure omnichannel")
    return ctx


ConfigSupervisor = Annotated[OrgContext, Depends(require_config_supervisor)]
