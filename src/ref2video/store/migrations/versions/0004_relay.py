"""The DashScope relay's columns: the upstream task, the account it was sent with, the moment
its submit was about to leave (the intent), the upstream state, and whether it was adopted.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("upstream_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("upstream_account", sa.String(16), nullable=True))
        batch.add_column(sa.Column("upstream_submit_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("upstream_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("upstream_adopted", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Unique: one upstream task can never be delivered to two of ours, whoever adopts it first.
    op.create_index("ux_tasks_upstream", "tasks", ["upstream_id"], unique=True)
    op.create_index("ix_tasks_lease", "tasks", ["lease_token"])
    op.create_index("ix_tasks_intent", "tasks", ["upstream_account", "upstream_submit_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_intent", "tasks")
    op.drop_index("ix_tasks_lease", "tasks")
    op.drop_index("ux_tasks_upstream", "tasks")
    with op.batch_alter_table("tasks") as batch:
        for name in ("upstream_adopted", "upstream_status", "upstream_submit_at", "upstream_account", "upstream_id"):
            batch.drop_column(name)
