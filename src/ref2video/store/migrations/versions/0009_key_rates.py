"""A key's own rate limits: nullable columns on api_keys for its create and query rates and
bursts. NULL is the settings' value (every key made before this has none of its own); a rate
of 0 is no limit for that key.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_create_per_second", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_create_burst", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_query_per_second", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_query_burst", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_query_burst")
        batch.drop_column("rate_query_per_second")
        batch.drop_column("rate_create_burst")
        batch.drop_column("rate_create_per_second")
