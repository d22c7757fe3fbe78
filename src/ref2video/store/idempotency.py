"""Idempotency keys: an owner's `Idempotency-Key`, the hash of the body it came with, and the
task it made. Statements on the caller's connection; no function here opens a transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import IdempotencyKey

__all__ = ["claim_key", "find_key", "forget_key", "delete_expired"]


def _claim(add: Any) -> Any:
    values: dict[str, Any] = dict(body_hash=bindparam("body_hash"), task_id=bindparam("task_id"),
                                  created_at=bindparam("now"))
    return add(IdempotencyKey).values(owner=bindparam("owner"), key=bindparam("key"), **values).on_conflict_do_update(
        index_elements=[IdempotencyKey.owner, IdempotencyKey.key], set_=values,
        where=IdempotencyKey.created_at < bindparam("cutoff"),
    ).returning(IdempotencyKey.task_id)


# Built once: a statement made per call costs more in SQLAlchemy than in the database.
_CLAIM = {"postgresql": _claim(pg_insert), "sqlite": _claim(sqlite_insert)}


def claim_key(conn: Connection, owner: str, key: str, *, body_hash: str, task_id: str, now_ms: int,
              cutoff_ms: int) -> bool:
    """Bind the owner's `key` to `task_id`: True when it was free (never used, or used before
    `cutoff_ms`, which makes it free again). False when a live row holds it; on PostgreSQL a
    row another transaction is inserting is waited for first (the primary key's doing), so
    two transactions can never both bind one key."""
    params = dict(owner=owner, key=key, body_hash=body_hash, task_id=task_id, now=now_ms, cutoff=cutoff_ms)
    return conn.execute(_CLAIM[conn.dialect.name], params).first() is not None


def find_key(conn: Connection, owner: str, key: str) -> tuple[str, str | None] | None:
    """(body hash, task id) of the owner's `key`, or None."""
    row = conn.execute(
        select(IdempotencyKey.body_hash, IdempotencyKey.task_id)
        .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
    ).first()
    return None if row is None else (row.body_hash, row.task_id)


def forget_key(conn: Connection, owner: str, key: str) -> None:
    conn.execute(delete(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key))


def delete_expired(conn: Connection, cutoff_ms: int) -> int:
    """Remove keys made before `cutoff_ms`; how many went."""
    return int(conn.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff_ms)).rowcount)
