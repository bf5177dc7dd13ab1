"""credential rotation: a WhatsApp account's previous app secret, honoured until a deadline; token expiry

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.add_column(sa.Column("previous_app_secret_enc", sa.Text(), nullable=True))
        batch.add_column(sa.Column("previous_app_secret_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_column("previous_app_secret_until")
        batch.drop_column("previous_app_secret_enc")
