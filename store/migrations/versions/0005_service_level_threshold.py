"""inboxes.service_level_threshold_s: the per-inbox service level threshold (supervisor statistics)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inboxes") as batch:
        batch.add_column(sa.Column("service_level_threshold_s", sa.Integer(), server_default="20", nullable=False))
        batch.create_check_constraint(op.f("ck_inboxes_service_level_threshold_s"), "service_level_threshold_s BETWEEN 1 AND 3600")


def downgrade() -> None:
    with op.batch_alter_table("inboxes") as batch:
        batch.drop_constraint("ck_inboxes_service_level_threshold_s", type_="check")
        batch.drop_column("service_level_threshold_s")
