"""customers: conversations and sticky memory keyed by customer (BSUID or phone number)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:05:00

Existing rows are migrated: one customer per distinct (organization, wa_id) seen in transactions,
messages and sticky memory; a transaction stored under the empty wa_id (senders Meta named only by
BSUID, all mixed into one conversation before this revision) gets a customer of its own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = sa.text("state != 'closed'")


def _foreign_keys_off() -> None:
    """SQLite rebuilds a table to alter it; dropping the old copy with foreign keys on would run their
    ON DELETE actions (cascading away transaction events). The pragma only works outside a transaction."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    still_on = bind.exec_driver_sql("PRAGMA foreign_keys").scalar()
    has_rows = bind.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM transactions)").scalar()
    if still_on and has_rows:
        raise RuntimeError("cannot disable SQLite foreign keys to migrate existing transactions safely")


def _untyped(name: str, *columns: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in columns))


def upgrade() -> None:
    _foreign_keys_off()
    op.create_table(
        "customers",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("org_id", BIG_ID, nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("wa_id", sa.String(length=64), nullable=True),
        sa.Column("username", sa.String(length=256), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("merged_into", BIG_ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["merged_into"], ["customers.id"], name=op.f("fk_customers_merged_into_customers"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name=op.f("fk_customers_org_id_organizations"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customers_merged_into"), ["merged_into"], unique=False)
        batch_op.create_index(batch_op.f("ix_customers_org_id"), ["org_id"], unique=False)
        batch_op.create_index("uq_customers_org_user_id", ["org_id", "user_id"], unique=True,
                              sqlite_where=sa.text("user_id IS NOT NULL"),
                              postgresql_where=sa.text("user_id IS NOT NULL"))
        batch_op.create_index("uq_customers_org_wa_id", ["org_id", "wa_id"], unique=True,
                              sqlite_where=sa.text("wa_id IS NOT NULL"), postgresql_where=sa.text("wa_id IS NOT NULL"))

    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_user_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("customer_id", BIG_ID, nullable=True))
        batch_op.create_index(batch_op.f("ix_inbound_messages_customer_id"), ["customer_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_inbound_messages_customer_id_customers"), "customers",
                                    ["customer_id"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_id", BIG_ID, nullable=True))

    # ---- data: a customer for every phone number already known, per organization
    op.execute(sa.text("""
        INSERT INTO customers (org_id, wa_id, name, created_at, updated_at)
        SELECT known.org_id, known.wa_id, NULL, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM (
            SELECT org_id, customer_wa_id AS wa_id FROM transactions WHERE customer_wa_id != ''
            UNION SELECT org_id, from_wa_id FROM inbound_messages WHERE from_wa_id != ''
            UNION SELECT inboxes.org_id, sticky_agents.customer_wa_id FROM sticky_agents
                  JOIN inboxes ON inboxes.id = sticky_agents.inbox_id WHERE sticky_agents.customer_wa_id != ''
        ) AS known
    """))
    op.execute(sa.text("""
        UPDATE customers SET name = (
            SELECT m.customer_name FROM inbound_messages m
            WHERE m.org_id = customers.org_id AND m.from_wa_id = customers.wa_id AND m.customer_name IS NOT NULL
            ORDER BY m.id DESC LIMIT 1)
    """))
    op.execute(sa.text("""
        UPDATE transactions SET customer_id = (
            SELECT c.id FROM customers c WHERE c.org_id = transactions.org_id AND c.wa_id = transactions.customer_wa_id)
        WHERE customer_wa_id != ''
    """))
    bind = op.get_bind()
    # Conversations stored under the empty wa_id: one customer each (their senders cannot be told apart).
    for tx_id, org_id, name in bind.execute(sa.text(
            "SELECT id, org_id, customer_name FROM transactions WHERE customer_wa_id = '' ORDER BY id")).all():
        customer_id = bind.execute(sa.text(
            "INSERT INTO customers (org_id, name, created_at, updated_at) "
            "VALUES (:org, :name, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id"),
            {"org": org_id, "name": name}).scalar_one()
        bind.execute(sa.text("UPDATE transactions SET customer_id = :c WHERE id = :t"), {"c": customer_id, "t": tx_id})
    op.execute(sa.text("""
        UPDATE inbound_messages SET customer_id = (
            SELECT c.id FROM customers c WHERE c.org_id = inbound_messages.org_id AND c.wa_id = inbound_messages.from_wa_id)
        WHERE from_wa_id != ''
    """))
    op.execute(sa.text("""
        UPDATE inbound_messages SET customer_id = (
            SELECT t.customer_id FROM transactions t WHERE t.id = inbound_messages.transaction_id)
        WHERE from_wa_id = '' AND transaction_id IS NOT NULL
    """))

    # ---- sticky memory: rebuilt keyed by customer
    sticky = bind.execute(sa.text("""
        SELECT s.inbox_id, c.id, s.user_id, s.updated_at FROM sticky_agents s
        JOIN inboxes i ON i.id = s.inbox_id JOIN customers c ON c.org_id = i.org_id AND c.wa_id = s.customer_wa_id
    """)).all()
    op.drop_table("sticky_agents")
    op.create_table(
        "sticky_agents",
        sa.Column("inbox_id", BIG_ID, nullable=False),
        sa.Column("customer_id", BIG_ID, nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name=op.f("fk_sticky_agents_customer_id_customers"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["inbox_id"], ["inboxes.id"], name=op.f("fk_sticky_agents_inbox_id_inboxes"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sticky_agents_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("inbox_id", "customer_id", name=op.f("pk_sticky_agents")),
    )
    if sticky:  # untyped columns: the stored values go back as read
        op.bulk_insert(_untyped("sticky_agents", "inbox_id", "customer_id", "user_id", "updated_at"),
                       [{"inbox_id": i, "customer_id": c, "user_id": u, "updated_at": at} for i, c, u, at in sticky])

    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("uq_transactions_open_customer", sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.alter_column("customer_id", existing_type=BIG_ID, nullable=False)
        batch_op.alter_column("customer_wa_id", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index(batch_op.f("ix_transactions_customer_id"), ["customer_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_transactions_customer_id_customers"), "customers",
                                    ["customer_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index("uq_transactions_open_customer", ["inbox_id", "customer_id"], unique=True,
                              sqlite_where=OPEN, postgresql_where=OPEN)


def downgrade() -> None:
    _foreign_keys_off()
    bind = op.get_bind()
    sticky = bind.execute(sa.text("""
        SELECT s.inbox_id, c.wa_id, s.user_id, s.updated_at FROM sticky_agents s
        JOIN customers c ON c.id = s.customer_id WHERE c.wa_id IS NOT NULL
    """)).all()
    op.drop_table("sticky_agents")
    op.create_table(
        "sticky_agents",
        sa.Column("inbox_id", BIG_ID, nullable=False),
        sa.Column("customer_wa_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["inbox_id"], ["inboxes.id"], name=op.f("fk_sticky_agents_inbox_id_inboxes"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sticky_agents_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("inbox_id", "customer_wa_id", name=op.f("pk_sticky_agents")),
    )
    if sticky:
        op.bulk_insert(_untyped("sticky_agents", "inbox_id", "customer_wa_id", "user_id", "updated_at"),
                       [{"inbox_id": i, "customer_wa_id": w, "user_id": u, "updated_at": at} for i, w, u, at in sticky])
    # A customer known only by BSUID has no phone number to go back to: its conversations keep a
    # distinct placeholder so the one-open-conversation index still holds.
    op.execute(sa.text("""
        UPDATE transactions SET customer_wa_id = COALESCE(
            (SELECT c.wa_id FROM customers c WHERE c.id = transactions.customer_id),
            'customer-' || CAST(customer_id AS VARCHAR(20)))
    """))
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("uq_transactions_open_customer", sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.drop_constraint(batch_op.f("fk_transactions_customer_id_customers"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_transactions_customer_id"))
        batch_op.drop_column("customer_id")
        batch_op.alter_column("customer_wa_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("uq_transactions_open_customer", ["inbox_id", "customer_wa_id"], unique=True,
                              sqlite_where=OPEN, postgresql_where=OPEN)
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_inbound_messages_customer_id_customers"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_inbound_messages_customer_id"))
        batch_op.drop_column("customer_id")
        batch_op.drop_column("from_user_id")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index("uq_customers_org_wa_id", sqlite_where=sa.text("wa_id IS NOT NULL"),
                            postgresql_where=sa.text("wa_id IS NOT NULL"))
        batch_op.drop_index("uq_customers_org_user_id", sqlite_where=sa.text("user_id IS NOT NULL"),
                            postgresql_where=sa.text("user_id IS NOT NULL"))
        batch_op.drop_index(batch_op.f("ix_customers_org_id"))
        batch_op.drop_index(batch_op.f("ix_customers_merged_into"))
    op.drop_table("customers")
