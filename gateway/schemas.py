"""Response models of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from store.tables import User


class OwnerCreated(BaseModel):
    id: int
    name: str
    email: str
    token: str


class OrganizationCreated(BaseModel):
    id: int
    name: str
    owner: OwnerCreated


class OrganizationOut(BaseModel):
    id: int
    name: str
    created_at: datetime
    missed_offers_before_away: int


class UserOut(BaseModel):
    id: int
    org_id: int
    name: str
    email: str
    role: str
    licenses: list[str]
    is_supervisor: bool
    can_handle_whatsapp: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        from config.models import Role, holds_agent_licenses

        return cls(id=user.id, org_id=user.org_id, name=user.name, email=user.email, role=user.role,
                   licenses=list(user.licenses), is_supervisor=Role(user.role).is_supervisor,
                   can_handle_whatsapp=holds_agent_licenses(user.licenses), created_at=user.created_at)


class UserCreated(UserOut):
    token: str


class WebhookEndpointOut(BaseModel):
    callback_path: str
    callback_url: str
    verify_token: str


class PhoneNumberOut(BaseModel):
    phone_number_id: str
    waba_id: str
    display_phone_number: str | None
    verified_name: str | None
    quality_rating: str | None
    # Outbound throughput setting of the number (None: the default, 80/s).
    messages_per_second: int | None = None
    available: bool
    # Set when an inbox of *this* organization uses the number; other organizations stay invisible.
    inbox_id: int | None = None


class WhatsAppAccountOut(BaseModel):
    waba_id: str
    name: str | None
    linked_at: datetime
    refreshed_at: datetime
    phone_numbers: list[PhoneNumberOut]


class InboxAgentOut(BaseModel):
    user_id: int
    name: str
    proficiency: int


class InboxOut(BaseModel):
    id: int
    org_id: int
    name: str
    type: str
    phone_number_id: str
    display_phone_number: str | None
    assignment_mode: str
    reassign_after_s: int
    dials_per_agent: int
    service_level_threshold_s: int
    agents: list[InboxAgentOut]
    created_at: datetime
    updated_at: datetime


class AgentCandidateOut(BaseModel):
    user_id: int
    name: str
    email: str
    role: str


class WebhookAck(BaseModel):
    messages: int
    duplicate_messages: int
    statuses: int
    other_changes: int


class MetaErrorOut(BaseModel):
    code: int | None
    message: str
    type: str | None
    error_subcode: int | None
    fbtrace_id: str | None

    @classmethod
    def of(cls, error: Any) -> MetaErrorOut:
        return cls(code=error.code, message=error.message, type=error.type,
                   error_subcode=error.error_subcode, fbtrace_id=error.fbtrace_id)


class PendingOfferOut(BaseModel):
    transaction_id: int
    inbox_id: int
    expires_at: str | None


class AgentOut(BaseModel):
    user_id: int
    status: str
    # Set when the router changed the status (e.g. "missed 3 offers in a row"); None when the agent did.
    status_reason: str | None = None
    max_concurrent: int
    active_transactions: list[int]
    idle_since: str | None
    pending_offer: PendingOfferOut | None


class CustomerOut(BaseModel):
    """The customer of a conversation: `user_id` is Meta's business-scoped user id (BSUID), `wa_id` the
    phone number; either may be unknown (a username user may share no number)."""

    id: int
    user_id: str | None
    wa_id: str | None
    username: str | None
    name: str | None


class TransactionOut(BaseModel):
    id: int
    org_id: int
    inbox_id: int
    customer: CustomerOut
    state: str
    agent_id: int | None
    offered_to: int | None
    offer_expires_at: datetime | None
    waiting_since: datetime
    assigned_at: datetime | None
    closed_at: datetime | None
    created_at: datetime


class DeliveryErrorOut(BaseModel):
    code: int | None
    title: str | None
    details: str | None


class MessageOut(BaseModel):
    id: int
    # Customer's messages are `inbound`; the agents' replies `outbound` (ids are per direction).
    direction: str = "inbound"
    wamid: str | None
    type: str
    summary: str
    sent_at: datetime
    received_at: datetime
    # Outbound only: delivery state (queued .. read, or failed with Meta's reason), author, quote.
    state: str | None = None
    agent_id: int | None = None
    reply_to: str | None = None
    error: DeliveryErrorOut | None = None


class TransactionDetailOut(TransactionOut):
    # Free-form replies are possible until then (24 h after the customer's last message).
    window_expires_at: datetime | None = None
    messages: list[MessageOut]


class TransactionEventOut(BaseModel):
    id: int
    kind: str
    agent_id: int | None
    at: datetime
    detail: dict[str, Any]


class QueueEntryOut(BaseModel):
    id: int
    customer: CustomerOut
    state: str
    waiting_since: datetime
    offered_to: int | None
    first_message: str | None


# ---------------------------------------------------------------- messaging


class TemplateLanguageOut(BaseModel):
    language: str
    status: str
    reason: str | None
    meta_template_id: str | None
    updated_at: datetime


class TemplateOut(BaseModel):
    name: str
    waba_id: str
    category: str
    header: str | None
    body: str | None
    footer: str | None
    # Placeholders a send must fill: `parameters` (body) and `header_parameters`.
    body_parameters: int
    header_parameters: int
    languages: list[TemplateLanguageOut]


class OutboundMessageOut(BaseModel):
    id: int
    state: str
    transaction_id: int | None
    inbox_id: int | None
    agent_id: int | None
    type: str
    summary: str
    to_wa_id: str | None
    to_user_id: str | None
    wamid: str | None
    reply_to: str | None
    attempts: int
    status_at: datetime | None
    error: DeliveryErrorOut | None
    created_at: datetime


class OutboundStartOut(BaseModel):
    transaction_id: int
    # True when the customer's open conversation with this agent was reused.
    reused: bool
    message: OutboundMessageOut


class TokenOut(BaseModel):
    id: int
    user_id: int
    created_at: datetime
    expires_at: datetime | None = None


class TokenCreated(TokenOut):
    # Shown once: only its hash is stored.
    token: str


class ErrorItem(BaseModel):
    """One offending input of a 422: where it is, what is wrong (`input`: the value, when short)."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ErrorOut(BaseModel):
    """Every refusal: `detail` is a message, or (422) the offending inputs; some refusals add fields."""

    model_config = {"extra": "allow"}

    detail: str | list[ErrorItem]
