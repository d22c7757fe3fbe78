"""The relay processes that share each provider account (`relay_members`), so the provider's
rate limits hold across processes: one row per process and account, with the rates the process
was configured with, live until `expires_at`.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_members",
        sa.Column("process", sa.String(36), primary_key=True),
        sa.Column("account", sa.String(16), primary_key=True),
        sa.Column("query_rate", sa.Float(), nullable=False),
        sa.Column("submit_rate", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("relay_members")
