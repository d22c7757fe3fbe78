"""An index on (owner, status) of tasks, so the unfinished-task quota counts an owner's PENDING
and RUNNING tasks without reading every task the owner has in retention.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_owner_status", "tasks", ["owner", "status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_owner_status", "tasks")
