"""Indexes for the orphan sweep, which asks in batches which stored files a row names: tasks by
result_key, uploads by blob.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_result_key", "tasks", ["result_key"])
    op.create_index("ix_uploads_blob", "uploads", ["blob"])


def downgrade() -> None:
    op.drop_index("ix_uploads_blob", "uploads")
    op.drop_index("ix_tasks_result_key", "tasks")
