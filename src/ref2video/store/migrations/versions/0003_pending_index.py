"""An index for queue positions: PENDING tasks in submission order.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_pending", "tasks", ["status", "submitted_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_pending", "tasks")
