"""Validated configuration models: what a supervisor may send. Unknown fields are refused (422, named)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from config.licenses import (
    AGENT_LICENSES,
    SUPERVISOR_CONFIG_LICENSE,
    License,
    holds_agent_licenses,
    missing_agent_license,
)
from routing.model import AssignmentMode

__all__ = [
    "AGENT_LICENSES",
    "MAX_ID",
    "SUPERVISOR_CONFIG_LICENSE",
    "AgentPresence",
    "AgentSettingsUpdate",
    "AssignmentMode",
    "DbId",
    "InboxAgentIn",
    "InboxCreate",
    "InboxUpdate",
    "License",
    "OrganizationCreate",
    "OwnerIn",
    "PresenceUpdate",
    "Role",
    "TokenCreate",
    "TransferRequest",
    "UserCreate",
    "UserUpdate",
    "WhatsAppAccountLink",
    "WhatsAppCredentials",
    "holds_agent_licenses",
    "missing_agent_license",
]


class Role(StrEnum):
    owner = "owner"
    admin = "admin"
    member = "member"

    @property
    def is_supervisor(self) -> bool:
        return self in (Role.owner, Role.admin)


# Store ids are 64-bit integers; a larger number names nothing and would overflow the driver.
MAX_ID = 2**63 - 1
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# No NUL characters: PostgreSQL text cannot hold them (the store would refuse what validation let through).
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")]


def _not_null(value: object) -> object:
    # PATCH bodies: an omitted field stays unchanged, but an explicit null is refused (named), not ignored.
    if value is None:
        raise ValueError("must not be null; omit the field to leave it unchanged")
    return value


def _validate_licenses(value: list[License]) -> list[License]:
    if len(set(value)) != len(value):
        raise ValueError("licences must not repeat")
    if value and License.phone_system not in value:
        raise ValueError("phone_system is the base licence and is required for any add-on")
    order = list(License)
    return sorted(value, key=order.index)


class OwnerIn(_Strict):
    name: Name
    email: Email
    licenses: list[License] = Field(default_factory=lambda: [License.phone_system, License.contact_center])

    _licenses = field_validator("licenses")(_validate_licenses)


class OrganizationCreate(_Strict):
    name: Name
    owner: OwnerIn


class OrganizationUpdate(_Strict):
    # Offers an agent may let ring out in a row before being set away (0 = never).
    missed_offers_before_away: Annotated[int, Field(ge=0, le=100)]


class UserCreate(_Strict):
    name: Name
    email: Email
    role: Role = Role.member
    licenses: list[License] = Field(default_factory=list)

    _licenses = field_validator("licenses")(_validate_licenses)


class UserUpdate(_Strict):
    # Optional but never null (see _not_null): the schema offers no null either (SkipJsonSchema).
    name: Name | SkipJsonSchema[None] = None
    role: Role | SkipJsonSchema[None] = None
    licenses: list[License] | SkipJsonSchema[None] = None

    _present = field_validator("name", "role", "licenses", mode="before")(_not_null)

    @field_validator("licenses")
    @classmethod
    def _check_licenses(cls, value: list[License] | None) -> list[License] | None:
        return None if value is None else _validate_licenses(value)


# Sent to Meta in an HTTP header: visible ASCII only (anything else cannot be sent, or would split the header).
AccessToken = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[!-~]+$",
                                   description="Meta's access token (visible ASCII characters)")]


class WhatsAppAccountLink(_Strict):
    waba_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$", description="WhatsApp Business Account ID")]
    access_token: AccessToken
    app_secret: Annotated[str, Field(min_length=1, max_length=512)]


class TokenCreate(_Strict):
    # Refused after this many seconds (a minute to ten years); none: until revoked.
    expires_in_s: Annotated[int | None, Field(ge=60, le=10 * 365 * 86400)] = None


class WhatsAppCredentials(_Strict):
    access_token: AccessToken
    app_secret: Annotated[str, Field(min_length=1, max_length=512)]


Proficiency = Annotated[int, Field(ge=1, le=100)]


class InboxAgentIn(_Strict):
    user_id: DbId
    proficiency: Proficiency = 1


def _unique_agents(agents: list[InboxAgentIn]) -> list[InboxAgentIn]:
    seen: set[int] = set()
    for agent in agents:
        if agent.user_id in seen:
            raise ValueError(f"user {agent.user_id} is listed twice")
        seen.add(agent.user_id)
    return agents


ReassignAfter = Annotated[int, Field(ge=1, le=900, description="Seconds an offer waits for acceptance")]
DialsPerAgent = Annotated[int, Field(ge=1, le=100, description="Sticky-agent dials before fallback")]
ServiceLevelThreshold = Annotated[int, Field(ge=1, le=3600, description="Service level: answered within (s)")]
PhoneNumberId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]


class InboxCreate(_Strict):
    name: Name
    type: Annotated[str, Field(pattern=r"^whatsapp$")] = "whatsapp"
    phone_number_id: PhoneNumberId
    assignment_mode: AssignmentMode = AssignmentMode.ROUND_ROBIN
    reassign_after_s: ReassignAfter = 30
    dials_per_agent: DialsPerAgent = 1
    service_level_threshold_s: ServiceLevelThreshold = 20
    agents: list[InboxAgentIn] = Field(default_factory=list)

    _agents = field_validator("agents")(_unique_agents)


class InboxUpdate(_Strict):
    # Optional but never null (see _not_null): the schema offers no null either (SkipJsonSchema).
    name: Name | SkipJsonSchema[None] = None
    phone_number_id: PhoneNumberId | SkipJsonSchema[None] = None
    assignment_mode: AssignmentMode | SkipJsonSchema[None] = None
    reassign_after_s: ReassignAfter | SkipJsonSchema[None] = None
    dials_per_agent: DialsPerAgent | SkipJsonSchema[None] = None
    service_level_threshold_s: ServiceLevelThreshold | SkipJsonSchema[None] = None
    agents: list[InboxAgentIn] | SkipJsonSchema[None] = None

    _present = field_validator("name", "phone_number_id", "assignment_mode", "reassign_after_s", "dials_per_agent",
                               "service_level_threshold_s", "agents", mode="before")(_not_null)

    @field_validator("agents")
    @classmethod
    def _check_agents(cls, value: list[InboxAgentIn] | None) -> list[InboxAgentIn] | None:
        return None if value is None else _unique_agents(value)


class AgentPresence(StrEnum):
    available = "available"
    away = "away"
    offline = "offline"


class PresenceUpdate(_Strict):
    status: AgentPresence


class AgentSettingsUpdate(_Strict):
    max_concurrent: Annotated[int, Field(ge=1, le=50)]


class TransferRequest(_Strict):
    user_id: DbId | None = None
    to_queue: bool = False
