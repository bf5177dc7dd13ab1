"""The relational schema. Invariants live here as constraints, not in check-then-insert code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.types import BigId, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


# ---------------------------------------------------------------- organizations, users, tokens


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint("missed_offers_before_away BETWEEN 0 AND 100", name="missed_offers_before_away"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    webhook_verify_token: Mapped[str] = mapped_column(String(128))
    # An agent who lets this many offers in a row ring out is set away (0 = never).
    missed_offers_before_away: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("org_id", "email", name="uq_users_org_email"),
        # Emails are unique per organization whatever their case, even under concurrent creates.
        Index("uq_users_org_email_lower", "org_id", func.lower(text("email")), unique=True),
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    licenses: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """Bearer tokens, stored only as SHA-256 hashes. `user_id` NULL means the platform admin."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Refused from this time on (None: until revoked).
    expires_at: Mapped[datetime | None]


# ---------------------------------------------------------------- WhatsApp accounts and numbers


class WhatsAppAccount(Base):
    """A WABA linked to one organization. The same WABA may be linked to many organizations."""

    __tablename__ = "whatsapp_accounts"
    __table_args__ = (UniqueConstraint("org_id", "waba_id", name="uq_whatsapp_accounts_org_waba"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    waba_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    access_token_enc: Mapped[str] = mapped_column(Text)
    app_secret_enc: Mapped[str] = mapped_column(Text)
    linked_at: Mapped[datetime] = mapped_column(default=utcnow)
    refreshed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # After a credential rotation, the app secret replaced still verifies deliveries until this time
    # (Meta retries deliveries signed before the change).
    previous_app_secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_app_secret_until: Mapped[datetime | None]


class PhoneNumber(Base):
    """A number of a WABA, as Meta reported it. Shared by every organization linking that WABA."""

    __tablename__ = "phone_numbers"
    phone_number_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    waba_id: Mapped[str] = mapped_column(String(64), index=True)
    display_phone_number: Mapped[str | None] = mapped_column(String(64))
    verified_name: Mapped[str | None] = mapped_column(String(200))
    quality_rating: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Outbound throughput for this number (Meta's default 80/s; up to 1,000 when Meta raised it).
    messages_per_second: Mapped[int | None] = mapped_column(Integer)


# ---------------------------------------------------------------- inboxes


class Inbox(Base):
    __tablename__ = "inboxes"
    __table_args__ = (
        # One number per inbox, and a number used by an inbox anywhere is unavailable everywhere else.
        UniqueConstraint("phone_number_id", name="uq_inboxes_phone_number_id"),
        CheckConstraint("reassign_after_s BETWEEN 1 AND 900", name="reassign_after_s"),
        CheckConstraint("dials_per_agent BETWEEN 1 AND 100", name="dials_per_agent"),
        CheckConstraint(
            "assignment_mode IN ('round_robin', 'manual', 'proficiency', 'sticky', 'longest_idle')",
            name="assignment_mode",
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16), default="whatsapp")
    phone_number_id: Mapped[str] = mapped_column(ForeignKey("phone_numbers.phone_number_id"))
    assignment_mode: Mapped[str] = mapped_column(String(16))
    reassign_after_s: Mapped[int] = mapped_column(Integer, default=30)
    dials_per_agent: Mapped[int] = mapped_column(Integer, default=1)
    # Round-robin memory: the order key (user id) of the last agent offered a transaction.
    rotation_pointer: Mapped[int | None] = mapped_column(BigId)
    # Bumped by every configuration write that concerns the inbox (its settings, members, their
    # licences): the live inbox actor compares it and reloads, even if no notification reached it.
    config_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Fencing epoch: each activation of the inbox's actor takes the next one, and every write of
    # that actor is conditional on it, so a stale owner's writes are refused.
    owner_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboxAgent(Base):
    __tablename__ = "inbox_agents"
    __table_args__ = (CheckConstraint("proficiency BETWEEN 1 AND 100", name="proficiency"),)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    proficiency: Mapped[int] = mapped_column(Integer, default=1)


# ---------------------------------------------------------------- customers


class Customer(Base):
    """A WhatsApp user writing to the organization: known by business-scoped user id (BSUID, `user_id`)
    when Meta gives one, else by phone number (`wa_id`). Both are unique per organization when set,
    so concurrent intake of the same new customer cannot create two rows. A customer found to be
    another one (first seen by phone, later by BSUID) is merged into the older row: `merged_into`
    points at it and the merged row keeps no identifier (see `store/customers.py`)."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("uq_customers_org_user_id", "org_id", "user_id", unique=True,
              sqlite_where=text("user_id IS NOT NULL"), postgresql_where=text("user_id IS NOT NULL")),
        Index("uq_customers_org_wa_id", "org_id", "wa_id", unique=True,
              sqlite_where=text("wa_id IS NOT NULL"), postgresql_where=text("wa_id IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(128))
    wa_id: Mapped[str | None] = mapped_column(String(64))
    username: Mapped[str | None] = mapped_column(String(256))
    name: Mapped[str | None] = mapped_column(String(256))
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- webhook intake


class InboundMessage(Base):
    """A customer's message, written before Meta gets its 200. Idempotent on (org, wamid)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("org_id", "wamid", name="uq_inbound_messages_org_wamid"),
        Index("ix_inbound_messages_inbox_transaction", "inbox_id", "transaction_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    wamid: Mapped[str] = mapped_column(String(256))
    waba_id: Mapped[str] = mapped_column(String(64))
    phone_number_id: Mapped[str | None] = mapped_column(String(64))
    # NULL when no inbox of this organization uses the number: stored and acknowledged, never dropped.
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inboxes.id", ondelete="SET NULL"))
    transaction_id: Mapped[int | None] = mapped_column(
        ForeignKey("transactions.id", ondelete="SET NULL"), index=True
    )
    # "" when Meta gave no phone number (a username user known only by BSUID).
    from_wa_id: Mapped[str] = mapped_column(String(64))
    from_user_id: Mapped[str | None] = mapped_column(String(128))
    # NULL only for a message that named no sender at all.
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    customer_name: Mapped[str | None] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    raw: Mapped[dict[str, Any]]
    # Set when the message names another organization's number but the delivery's signature does not
    # verify with that organization's app secret: kept here for review, never routed.
    flag: Mapped[str | None] = mapped_column(Text)


class MessageStatus(Base):
    __tablename__ = "message_statuses"
    __table_args__ = (
        UniqueConstraint("org_id", "wamid", "status", name="uq_message_statuses_org_wamid_status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    wamid: Mapped[str] = mapped_column(String(256))
    waba_id: Mapped[str] = mapped_column(String(64))
    phone_number_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    recipient_id: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    errors: Mapped[list[Any]] = mapped_column(default=list)
    raw: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookChange(Base):
    """Every other change (template status updates, account events, calls, future fields), kept verbatim.

    `dedupe_key` is a hash of the change, so a redelivered webhook does not store it twice.
    """

    __tablename__ = "webhook_changes"
    __table_args__ = (UniqueConstraint("org_id", "dedupe_key", name="uq_webhook_changes_org_dedupe"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    waba_id: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(64))
    event: Mapped[str | None] = mapped_column(String(64))
    template_id: Mapped[str | None] = mapped_column(String(64))
    template_name: Mapped[str | None] = mapped_column(String(512))
    template_language: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    value: Mapped[dict[str, Any]]
    dedupe_key: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- routing state


class AgentState(Base):
    """Presence and capacity of an agent, owned at runtime by the agent's actor."""

    __tablename__ = "agent_states"
    __table_args__ = (
        CheckConstraint("status IN ('available', 'away', 'offline')", name="status"),
        CheckConstraint("max_concurrent BETWEEN 1 AND 50", name="max_concurrent"),
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="offline")
    max_concurrent: Mapped[int] = mapped_column(Integer, default=1)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    available_since: Mapped[datetime | None]
    last_chat_end_at: Mapped[datetime | None]
    # Why the status was last set by the router rather than the agent (e.g. missed offers).
    status_reason: Mapped[str | None] = mapped_column(String(200))
    missed_in_a_row: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Taken anew by each activation of the agent's actor: snapshots are ordered by (epoch, sequence).
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Transaction(Base):
    """One customer conversation on one inbox, from the first message until an agent closes it."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint("state IN ('queued', 'offered', 'assigned', 'closed')", name="state"),
        # At most one open conversation per customer per inbox, even under concurrent ingest.
        Index(
            "uq_transactions_open_customer",
            "inbox_id",
            "customer_id",
            unique=True,
            sqlite_where=text("state != 'closed'"),
            postgresql_where=text("state != 'closed'"),
        ),
        Index("ix_transactions_org_state", "org_id", "state"),
        Index("ix_transactions_agent_state", "agent_id", "state"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    # Display copies of the customer as first seen; the customers row is the truth.
    customer_wa_id: Mapped[str | None] = mapped_column(String(64))
    customer_name: Mapped[str | None] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    offered_to: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    offer_expires_at: Mapped[datetime | None]
    # Monotonic per transaction: a timer or an answer for an older offer is recognised as stale.
    offer_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The pending offer's reservation id ("<tx>.<seq>"): every inbox<->agent call about it names it.
    offer_id: Mapped[str | None] = mapped_column(String(64))
    sticky_dials: Mapped[int] = mapped_column(Integer, default=0)
    sticky_declined: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    tried: Mapped[list[Any]] = mapped_column(default=list)
    waiting_since: Mapped[datetime] = mapped_column(default=utcnow)
    assigned_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TransactionEvent(Base):
    """The routing audit trail: queued, offered, rescinded, missed, declined, accepted, ..."""

    __tablename__ = "transaction_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    agent_id: Mapped[int | None] = mapped_column(BigId)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class StickyAgent(Base):
    __tablename__ = "sticky_agents"
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentEvent(Base):
    """An agent's event stream; the id is the cursor a reconnecting workspace resumes from."""

    __tablename__ = "agent_events"
    __table_args__ = (Index("ix_agent_events_user_id_id", "user_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """The one deployment (Ray cluster and namespace) acting on this store, held as a heartbeat lease.

    A second deployment started against a store whose lease is live refuses to start, so two Ray
    clusters never act on the same inboxes.
    """

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[str] = mapped_column(String(200))
    # host:pid of the gateway that wrote last: a dead process on this host holds no live lease.
    holder: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime | None]


# ---------------------------------------------------------------- messaging: templates and the outbox


class MessageTemplate(Base):
    """One language of a WhatsApp message template, with the review status Meta reported for it."""

    __tablename__ = "message_templates"
    __table_args__ = (
        UniqueConstraint("org_id", "waba_id", "name", "language", name="uq_message_templates_org_waba_name_lang"),
        Index("ix_message_templates_waba_meta_id", "waba_id", "meta_template_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    waba_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default="PENDING")
    reason: Mapped[str | None] = mapped_column(Text)
    meta_template_id: Mapped[str | None] = mapped_column(String(64))
    components: Mapped[list[Any]] = mapped_column(default=list)
    # Placeholders ({{1}}..) a send must fill, counted once here.
    header_params: Mapped[int] = mapped_column(Integer, default=0)
    body_params: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


OUTBOUND_STATES = ("queued", "sending", "accepted", "sent", "delivered", "read", "played", "failed")


class OutboundMessage(Base):
    """A message to a customer: the persisted outbox entry (queued, sending) and then its delivery record.

    Accepted by the API before it is sent; the number's sender actor sends it with `idempotency_key`,
    so a retry after a crash or a lost answer is not sent twice. `state` only moves forward.
    """

    __tablename__ = "outbound_messages"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_outbound_messages_idempotency_key"),
        UniqueConstraint("wamid", name="uq_outbound_messages_wamid"),
        Index("ix_outbound_messages_number_state", "phone_number_id", "state"),
        Index("ix_outbound_messages_transaction_id", "transaction_id"),
        CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in OUTBOUND_STATES) + ")", name="state"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    waba_id: Mapped[str] = mapped_column(String(64))
    phone_number_id: Mapped[str] = mapped_column(String(64))
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inboxes.id", ondelete="SET NULL"))
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("transactions.id", ondelete="SET NULL"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The customer: phone number (wa_id) when known, else the business-scoped user id (BSUID).
    to_wa_id: Mapped[str | None] = mapped_column(String(64))
    to_user_id: Mapped[str | None] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    # The Graph API body, ready to POST to /{phone_number_id}/messages.
    payload: Mapped[dict[str, Any]]
    reply_to: Mapped[str | None] = mapped_column(String(256))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # Meta's timestamp of the status `state` reflects (statuses arrive out of order).
    status_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    wamid: Mapped[str | None] = mapped_column(String(256))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

