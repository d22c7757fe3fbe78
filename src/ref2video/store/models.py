"""The tables. Times are epoch milliseconds (UTC) in BIGINT columns, the same on every database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Task", "ApiKey", "ServerSecret", "Upload", "HealthProbe", "Account", "LedgerEntry",
           "IdempotencyKey", "WebhookEndpoint", "OutboxMessage", "WebhookSecret", "RateBucket",
           "RelayMember"]


class Base(DeclarativeBase):
    pass


class Task(Base):
    """One task: the system of record and the queue entry at once (ARCHITECTURE.md, decision 1)."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    run_after: Mapped[int] = mapped_column(BigInteger)  # not claimable before (retry backoff)
    submitted_at: Mapped[int] = mapped_column(BigInteger)
    scheduled_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    engine: Mapped[str | None] = mapped_column(String(64))
    result_key: Mapped[str | None] = mapped_column(String(255))
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The DashScope relay (ref2video.engines.dashscope): the provider's task, the account (a key's
    # fingerprint) it was sent with, when the submit was about to leave (set before sending,
    # so a crash leaves evidence to reconcile), the provider's last state, and whether the
    # task was found again through the provider's list rather than recorded from the answer.
    upstream_id: Mapped[str | None] = mapped_column(String(64))
    upstream_account: Mapped[str | None] = mapped_column(String(16))
    upstream_submit_at: Mapped[int | None] = mapped_column(BigInteger)
    upstream_status: Mapped[str | None] = mapped_column(String(16))
    upstream_adopted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    callback_url: Mapped[str | None] = mapped_column(Text)  # the task's own webhook (X-Ref2video-Callback)

    __table_args__ = (
        Index("ix_tasks_claim", "status", "run_after", "submitted_at"),
        Index("ix_tasks_owner_submitted", "owner", "submitted_at"),
        Index("ix_tasks_submitted", "submitted_at"),
        Index("ix_tasks_pending", "status", "submitted_at", "id"),  # queue positions
        Index("ux_tasks_upstream", "upstream_id", unique=True),
        Index("ix_tasks_lease", "lease_token"),  # a relay renews all its tasks at once
        Index("ix_tasks_intent", "upstream_account", "upstream_submit_at"),
        Index("ix_tasks_result_key", "result_key"),  # the orphan sweep asks who owns a file
        Index("ix_tasks_owner_status", "owner", "status"),  # the unfinished-task quota counts here
    )


class ApiKey(Base):
    """An API key: `r2v-<id>-<secret>`, of which only the secret's SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16), default="user", server_default="user")  # "user" or "admin"
    # The key's own rate limits (docs/limits.md); None: the settings', a rate of 0: no limit.
    rate_create_per_second: Mapped[float | None] = mapped_column(Float)
    rate_create_burst: Mapped[int | None] = mapped_column(Integer)
    rate_query_per_second: Mapped[float | None] = mapped_column(Float)
    rate_query_burst: Mapped[int | None] = mapped_column(Integer)


class ServerSecret(Base):
    """Secrets the server makes once and every process shares (the URL signing key)."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Upload(Base):
    """A file a key's owner uploaded (the SDK's `file://` flow); referenced as `oss://<key>`."""

    __tablename__ = "uploads"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    blob: Mapped[str] = mapped_column(String(128))  # the file's name in upload storage
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_uploads_created", "created_at"), Index("ix_uploads_blob", "blob"))


class HealthProbe(Base):
    """One row per process, rewritten by `/health`: proof that the database still takes writes."""

    __tablename__ = "health_probes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[int] = mapped_column(BigInteger)


class Account(Base):
    """An owner's money, in micro-credits (the operator says what a credit is worth). `balance`
    is the sum of the owner's ledger entries, kept here so a hold is one compare-and-set."""

    __tablename__ = "accounts"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger)
    daily_limit: Mapped[int | None] = mapped_column(BigInteger)
    monthly_limit: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class LedgerEntry(Base):
    """One movement of an owner's money; never changed, never removed. Kinds: topup, adjust,
    hold (a task's largest cost, negative), release (a hold given back), charge (negative)."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str | None] = mapped_column(String(36))
    task_at: Mapped[int | None] = mapped_column(BigInteger)  # the task's submit time: spend limits count by it
    model: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ux_ledger_task_kind", "task_id", "kind", unique=True),
        Index("ix_ledger_owner_created", "owner", "created_at"),
        Index("ix_ledger_owner_task_at", "owner", "task_at"),
    )


class IdempotencyKey(Base):
    """An owner's `Idempotency-Key`: the body it came with and the task it made."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_idempotency_created", "created_at"),)


class WebhookEndpoint(Base):
    """Where an owner wants task events sent, signed with `secret` (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_webhook_endpoints_owner", "owner"),)


class OutboxMessage(Base):
    """A webhook delivery, written in the transaction of the transition it reports."""

    __tablename__ = "webhook_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64))  # the stable `webhook-id`
    owner: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str | None] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[str] = mapped_column(String(36))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_at: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)
    given_up_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ux_outbox_message", "message_id", unique=True),
        Index("ix_outbox_due", "delivered_at", "given_up_at", "next_at"),
        Index("ix_outbox_owner_created", "owner", "created_at"),  # an owner's delivery log
        Index("ix_outbox_created", "created_at"),  # the sweep of finished rows
    )


class WebhookSecret(Base):
    """The secret that signs an owner's per-task callbacks (`X-Ref2video-Callback`); made on
    first use, shown by `ref2video webhooks secret`."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)


class RateBucket(Base):
    """A token bucket shared by every process on the database (rate limits)."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class RelayMember(Base):
    """A relay process that speaks for a provider account (`engines/dashscope/sharing.py`): one
    row per process and account, live until `expires_at`, so each process's share of the
    account's rate limits is the configured rate over the live members."""

    __tablename__ = "relay_members"

    process: Mapped[str] = mapped_column(String(36), primary_key=True)  # the relay's lease token
    account: Mapped[str] = mapped_column(String(16), primary_key=True)  # the key's fingerprint
    query_rate: Mapped[float] = mapped_column(Float)  # the process's configured rates for the key
    submit_rate: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[int] = mapped_column(BigInteger)
