"""initial schema

Revision ID: 0001
Revises: -
Create Date: 2026-11-24 20:22:47.130198
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("webhook_verify_token", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
    )
    op.create_table(
        "phone_numbers",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("display_phone_number", sa.String(length=64), nullable=True),
        sa.Column("verified_name", sa.String(length=200), nullable=True),
        sa.Column("quality_rating", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone_number_id", name=op.f("pk_phone_numbers")),
    )
    with op.batch_alter_table("phone_numbers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_phone_numbers_waba_id"), ["waba_id"], unique=False)

    op.create_table(
        "inboxes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("assignment_mode", sa.String(length=16), nullable=False),
        sa.Column("reassign_after_s", sa.Integer(), nullable=False),
        sa.Column("dials_per_agent", sa.Integer(), nullable=False),
        sa.Column("rotation_pointer", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "assignment_mode IN ('round_robin', 'manual', 'proficiency', 'sticky', 'longest_idle')",
            name=op.f("ck_inboxes_assignment_mode"),
        ),
        sa.CheckConstraint("dials_per_agent BETWEEN 1 AND 100", name=op.f("ck_inboxes_dials_per_agent")),
        sa.CheckConstraint("reassign_after_s BETWEEN 1 AND 900", name=op.f("ck_inboxes_reassign_after_s")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_inboxes_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["phone_number_id"],
            ["phone_numbers.phone_number_id"],
            name=op.f("fk_inboxes_phone_number_id_phone_numbers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inboxes")),
        sa.UniqueConstraint("phone_number_id", name="uq_inboxes_phone_number_id"),
    )
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inboxes_org_id"), ["org_id"], unique=False)

    op.create_table(
        "message_statuses",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("wamid", sa.String(length=256), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("recipient_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_message_statuses_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_statuses")),
        sa.UniqueConstraint("org_id", "wamid", "status", name="uq_message_statuses_org_wamid_status"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("licenses", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name=op.f("ck_users_role")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_users_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("org_id", "email", name="uq_users_org_email"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_org_id"), ["org_id"], unique=False)
    op.create_index("uq_users_org_email_lower", "users", ["org_id", sa.text("lower(email)")], unique=True)

    op.create_table(
        "webhook_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=True),
        sa.Column("template_id", sa.String(length=64), nullable=True),
        sa.Column("template_name", sa.String(length=512), nullable=True),
        sa.Column("template_language", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_webhook_changes_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_changes")),
        sa.UniqueConstraint("org_id", "dedupe_key", name="uq_webhook_changes_org_dedupe"),
    )
    op.create_table(
        "whatsapp_accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("access_token_enc", sa.Text(), nullable=False),
        sa.Column("app_secret_enc", sa.Text(), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_whatsapp_accounts_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_whatsapp_accounts")),
        sa.UniqueConstraint("org_id", "waba_id", name="uq_whatsapp_accounts_org_waba"),
    )
    with op.batch_alter_table("whatsapp_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_whatsapp_accounts_org_id"), ["org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_whatsapp_accounts_waba_id"), ["waba_id"], unique=False)

    op.create_table(
        "agent_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_agent_events_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_agent_events_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_events")),
    )
    with op.batch_alter_table("agent_events", schema=None) as batch_op:
        batch_op.create_index("ix_agent_events_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "agent_states",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_chat_end_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('available', 'away', 'offline')", name=op.f("ck_agent_states_status")),
        sa.CheckConstraint("max_concurrent BETWEEN 1 AND 50", name=op.f("ck_agent_states_max_concurrent")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_agent_states_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_agent_states_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_agent_states")),
    )
    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agent_states_org_id"), ["org_id"], unique=False)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "inbox_agents",
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("proficiency", sa.Integer(), nullable=False),
        sa.CheckConstraint("proficiency BETWEEN 1 AND 100", name=op.f("ck_inbox_agents_proficiency")),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inboxes.id"], name=op.f("fk_inbox_agents_inbox_id_inboxes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_inbox_agents_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("inbox_id", "user_id", name=op.f("pk_inbox_agents")),
    )
    with op.batch_alter_table("inbox_agents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbox_agents_user_id"), ["user_id"], unique=False)

    op.create_table(
        "sticky_agents",
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("customer_wa_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inboxes.id"], name=op.f("fk_sticky_agents_inbox_id_inboxes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sticky_agents_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("inbox_id", "customer_wa_id", name=op.f("pk_sticky_agents")),
    )
    op.create_table(
        "transactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("customer_wa_id", sa.String(length=64), nullable=False),
        sa.Column("customer_name", sa.String(length=256), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("offered_to", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("offer_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("offer_seq", sa.Integer(), nullable=False),
        sa.Column("sticky_dials", sa.Integer(), nullable=False),
        sa.Column("tried", sa.JSON(), nullable=False),
        sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('queued', 'offered', 'assigned', 'closed')", name=op.f("ck_transactions_state")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["users.id"], name=op.f("fk_transactions_agent_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inboxes.id"], name=op.f("fk_transactions_inbox_id_inboxes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["offered_to"], ["users.id"], name=op.f("fk_transactions_offered_to_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_transactions_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
    )
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_agent_state", ["agent_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_transactions_inbox_id"), ["inbox_id"], unique=False)
        batch_op.create_index("ix_transactions_org_state", ["org_id", "state"], unique=False)
        batch_op.create_index(
            "uq_transactions_open_customer",
            ["inbox_id", "customer_wa_id"],
            unique=True,
            sqlite_where=sa.text("state != 'closed'"),
            postgresql_where=sa.text("state != 'closed'"),
        )

    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("wamid", sa.String(length=256), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=True),
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("from_wa_id", sa.String(length=64), nullable=False),
        sa.Column("customer_name", sa.String(length=256), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inboxes.id"], name=op.f("fk_inbound_messages_inbox_id_inboxes"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_inbound_messages_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_inbound_messages_transaction_id_transactions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("org_id", "wamid", name="uq_inbound_messages_org_wamid"),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_messages_inbox_transaction", ["inbox_id", "transaction_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbound_messages_transaction_id"), ["transaction_id"], unique=False)

    op.create_table(
        "transaction_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_transaction_events_transaction_id_transactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transaction_events")),
    )
    with op.batch_alter_table("transaction_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transaction_events_transaction_id"), ["transaction_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transaction_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transaction_events_transaction_id"))

    op.drop_table("transaction_events")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_transaction_id"))
        batch_op.drop_index("ix_inbound_messages_inbox_transaction")

    op.drop_table("inbound_messages")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_transactions_open_customer",
            sqlite_where=sa.text("state != 'closed'"),
            postgresql_where=sa.text("state != 'closed'"),
        )
        batch_op.drop_index("ix_transactions_org_state")
        batch_op.drop_index(batch_op.f("ix_transactions_inbox_id"))
        batch_op.drop_index("ix_transactions_agent_state")

    op.drop_table("transactions")
    op.drop_table("sticky_agents")
    with op.batch_alter_table("inbox_agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_agents_user_id"))

    op.drop_table("inbox_agents")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))

    op.drop_table("api_tokens")
    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_states_org_id"))

    op.drop_table("agent_states")
    with op.batch_alter_table("agent_events", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_events_user_id_id")

    op.drop_table("agent_events")
    with op.batch_alter_table("whatsapp_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_whatsapp_accounts_waba_id"))
        batch_op.drop_index(batch_op.f("ix_whatsapp_accounts_org_id"))

    op.drop_table("whatsapp_accounts")
    op.drop_table("webhook_changes")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_org_id"))

    op.drop_index("uq_users_org_email_lower", table_name="users")
    op.drop_table("users")
    op.drop_table("message_statuses")
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inboxes_org_id"))

    op.drop_table("inboxes")
    with op.batch_alter_table("phone_numbers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_phone_numbers_waba_id"))

    op.drop_table("phone_numbers")
    op.drop_table("organizations")
