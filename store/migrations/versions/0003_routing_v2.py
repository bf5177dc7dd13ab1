"""routing core v2: offer ids, fencing epochs, configuration versions, missed offers, deployment lease

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite adds a CHECK constraint only by rebuilding the table.
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("missed_offers_before_away", sa.Integer(), server_default="3", nullable=False))
        batch.create_check_constraint(op.f("ck_organizations_missed_offers_before_away"), "missed_offers_before_away BETWEEN 0 AND 100")
    op.add_column("inboxes", sa.Column("config_version", sa.Integer(), server_default="0", nullable=False))
    op.add_column("inboxes", sa.Column("owner_epoch", sa.Integer(), server_default="0", nullable=False))
    op.add_column("agent_states", sa.Column("status_reason", sa.String(length=200), nullable=True))
    op.add_column("agent_states", sa.Column("missed_in_a_row", sa.Integer(), server_default="0", nullable=False))
    op.add_column("agent_states", sa.Column("epoch", sa.Integer(), server_default="0", nullable=False))
    op.add_column("transactions", sa.Column("offer_id", sa.String(length=64), nullable=True))
    op.add_column("transactions", sa.Column("sticky_declined", sa.Boolean(), server_default=sa.false(),
                                            nullable=False))
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )


def downgrade() -> None:
    op.drop_table("deployments")
    op.drop_column("transactions", "sticky_declined")
    op.drop_column("transactions", "offer_id")
    op.drop_column("agent_states", "epoch")
    op.drop_column("agent_states", "missed_in_a_row")
    op.drop_column("agent_states", "status_reason")
    op.drop_column("inboxes", "owner_epoch")
    op.drop_column("inboxes", "config_version")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_constraint("ck_organizations_missed_offers_before_away", type_="check")
        batch.drop_column("missed_offers_before_away")
