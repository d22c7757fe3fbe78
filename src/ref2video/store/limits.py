"""Rate limits and quotas in the database: the shared token buckets (`rate_buckets`) and the
count of an owner's unfinished tasks. Statements on the caller's connection; no function here
opens a transaction."""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..protocol import Status
from .models import RateBucket, Task

__all__ = ["add_bucket", "take_tokens", "lock_owner", "count_unfinished", "OWNER_LOCK_CLASS"]

# The first key of `pg_advisory_xact_lock(int, int)`; the two-key space never meets the
# one-key space the migration lock uses.
OWNER_LOCK_CLASS = 0x7232_7601

# One statement, so one round trip and one row lock: the bucket's row is locked (FOR UPDATE
# takes the newest version, whoever wrote it last), refilled for the time since it was last
# written, capped at the burst, and `want` whole tokens at most are taken from it. `level` is
# what it held before the take, `tokens` what it holds after. The commit does not wait for the
# WAL to reach the disk (set_config ... true lasts for this statement's transaction): a bucket
# is worth a fsync less than a query's latency, and a crash of the database loses at most the
# last few takes, which only lets a few more requests through.
_TAKE = text("""
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS s),
cur AS (
    SELECT name, LEAST(CAST(:burst AS double precision),
                       tokens + GREATEST(0, :now - updated_at) * CAST(:rate AS double precision)) AS level
    FROM rate_buckets WHERE name = :name FOR UPDATE
)
UPDATE rate_buckets AS b
SET tokens = cur.level - LEAST(CAST(:want AS double precision), FLOOR(cur.level)),
    updated_at = GREATEST(b.updated_at, :now)
FROM cur, cfg
WHERE b.name = cur.name AND cfg.s IS NOT NULL
RETURNING cur.level AS level, b.tokens AS tokens
""")


def add_bucket(conn: Connection, name: str, burst: int, now_ms: int) -> None:
    """Make the shared bucket `name`, full, unless it exists (PostgreSQL)."""
    conn.execute(pg_insert(RateBucket).values(name=name, tokens=float(burst), updated_at=now_ms)
                 .on_conflict_do_nothing())


def take_tokens(conn: Connection, name: str, *, rate_per_ms: float, burst: int, want: int,
                now_ms: int) -> tuple[int, float] | None:
    """Take up to `want` whole tokens from the shared bucket `name` (PostgreSQL): (taken, tokens
    left), or None when there is no such bucket yet (`add_bucket`)."""
    row = conn.execute(_TAKE, {"name": name, "rate": rate_per_ms, "burst": burst, "want": want,
                               "now": now_ms}).first()
    if row is None:
        return None
    return round(row.level - row.tokens), float(row.tokens)


def lock_owner(conn: Connection, owner: str) -> None:
    """Hold the owner's quota lock until the transaction ends (PostgreSQL; on SQLite the
    transaction's first write already holds the one write lock)."""
    if conn.dialect.name == "postgresql":
        digest = hashlib.sha256(owner.encode()).digest()
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"),
                     {"c": OWNER_LOCK_CLASS, "k": int.from_bytes(digest[:4], "big", signed=True)})


# Built once: a statement made per call costs more in SQLAlchemy than in the database.
_UNFINISHED = select(func.count()).select_from(
    select(Task.status)  # only columns of ix_tasks_owner_status: the count never reads the table's rows
    .where(Task.owner == bindparam("owner"), Task.status.in_([Status.PENDING.value, Status.RUNNING.value]))
    .limit(bindparam("up_to"))
    .subquery()
)


def count_unfinished(conn: Connection, owner: str, *, up_to: int) -> int:
    """The owner's PENDING and RUNNING tasks (those the caller's transaction inserted too),
    counted up to `up_to` at most, so an owner with many costs no more than the quota."""
    return int(conn.execute(_UNFINISHED, {"owner": owner, "up_to": up_to}).scalar_one())
