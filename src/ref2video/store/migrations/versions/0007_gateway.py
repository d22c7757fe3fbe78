"""The gateway's tables: accounts and their append-only ledger, key roles, idempotency keys,
webhook endpoints, their outbox and the owners' callback secrets, shared rate-limit buckets, and a task's own callback.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),  # micro-credits: the sum of its ledger
        sa.Column("daily_limit", sa.BigInteger(), nullable=True),
        sa.Column("monthly_limit", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=True),
        sa.Column("task_at", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    # One hold, one release and one charge per task at most, whoever races to write them.
    op.create_index("ux_ledger_task_kind", "ledger", ["task_id", "kind"], unique=True)
    op.create_index("ix_ledger_owner_created", "ledger", ["owner", "created_at"])
    op.create_index("ix_ledger_owner_task_at", "ledger", ["owner", "task_at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_idempotency_created", "idempotency_keys", ["created_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("disabled_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_webhook_endpoints_owner", "webhook_endpoints", ["owner"])
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(32), nullable=True),  # None: the task's own callback
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("next_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.Column("given_up_at", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ux_outbox_message", "webhook_outbox", ["message_id"], unique=True)
    op.create_index("ix_outbox_due", "webhook_outbox", ["delivered_at", "given_up_at", "next_at"])
    op.create_index("ix_outbox_owner_created", "webhook_outbox", ["owner", "created_at"])
    op.create_index("ix_outbox_created", "webhook_outbox", ["created_at"])
    op.create_table(  # the secret that signs an owner's per-task callbacks (X-Ref2video-Callback)
        "webhook_secrets",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(160), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("webhook_secrets")
    op.drop_index("ix_outbox_created", "webhook_outbox")
    op.drop_index("ix_outbox_owner_created", "webhook_outbox")
    op.drop_index("ix_outbox_due", "webhook_outbox")
    op.drop_index("ux_outbox_message", "webhook_outbox")
    op.drop_table("webhook_outbox")
    op.drop_index("ix_webhook_endpoints_owner", "webhook_endpoints")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_idempotency_created", "idempotency_keys")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("callback_url")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
    op.drop_index("ix_ledger_owner_task_at", "ledger")
    op.drop_index("ix_ledger_owner_created", "ledger")
    op.drop_index("ux_ledger_task_kind", "ledger")
    op.drop_table("ledger")
    op.drop_table("accounts")
