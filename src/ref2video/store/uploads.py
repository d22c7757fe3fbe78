"""Uploaded files: who owns which `oss://` key, and where its bytes are kept (statements on the
caller's connection)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .db import now_ms
from .keys import Principal
from .models import Upload

__all__ = ["UploadRecord", "record_upload", "key_taken", "find_upload", "unknown_keys", "expired_uploads",
           "delete_uploads", "owned_blobs"]


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    key: str
    owner: str
    blob: str
    size: int
    content_type: str
    created_at: int


def record_upload(conn: Connection, principal: Principal, *, key: str, blob: str, size: int,
                  content_type: str) -> bool:
    """Record a new upload; False when the key is taken (uploads never overwrite)."""
    add: Any = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(Upload)
    done = conn.execute(add.on_conflict_do_nothing().values(
        key=key, owner=principal.owner, key_id=principal.key_id, blob=blob, size=size,
        content_type=content_type, created_at=now_ms(),
    ).returning(Upload.key))
    return done.first() is not None


def key_taken(conn: Connection, key: str) -> bool:
    """Whether anyone already uploaded under `key` (uploads never overwrite)."""
    return conn.execute(select(Upload.key).where(Upload.key == key)).first() is not None


def find_upload(conn: Connection, owner: str, key: str, retention_ms: int) -> UploadRecord | None:
    """The owner's live upload under `key`; nobody else's."""
    row = conn.execute(select(Upload).where(
        Upload.key == key, Upload.owner == owner, Upload.created_at > now_ms() - retention_ms
    )).first()
    if row is None:
        return None
    return UploadRecord(row.key, row.owner, row.blob, row.size, row.content_type, row.created_at)


def unknown_keys(conn: Connection, owner: str, keys: Iterable[str], retention_ms: int) -> list[str]:
    """Those of `keys` that are not the owner's live uploads."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return []
    found = set(conn.execute(select(Upload.key).where(
        Upload.key.in_(wanted), Upload.owner == owner, Upload.created_at > now_ms() - retention_ms
    )).scalars())
    return [k for k in wanted if k not in found]


def expired_uploads(conn: Connection, retention_ms: int, limit: int = 500) -> list[tuple[str, str]]:
    """(key, blob) of up to `limit` uploads older than the retention window."""
    rows = conn.execute(
        select(Upload.key, Upload.blob).where(Upload.created_at <= now_ms() - retention_ms).limit(limit)
    ).all()
    return [(r.key, r.blob) for r in rows]


def delete_uploads(conn: Connection, keys: list[str]) -> None:
    conn.execute(delete(Upload).where(Upload.key.in_(keys)))


def owned_blobs(conn: Connection, blobs: Collection[str]) -> set[str]:
    """Those of `blobs` that some upload keeps its bytes in: one query, so pass a batch."""
    if not blobs:
        return set()
    return set(conn.execute(select(Upload.blob).where(Upload.blob.in_(list(blobs)))).scalars())
