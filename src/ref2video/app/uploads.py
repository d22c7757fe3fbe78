"""Uploaded files as the API and the workers use them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine

from ..store import uploads
from ..store.keys import Principal
from ..store.uploads import UploadRecord

__all__ = ["UploadRecord", "record_upload", "key_taken", "find_upload", "unknown_keys"]


def record_upload(db: Engine, principal: Principal, *, key: str, blob: str, size: int, content_type: str) -> bool:
    """Record a new upload; False when the key is taken (uploads never overwrite)."""
    with db.begin() as conn:
        return uploads.record_upload(conn, principal, key=key, blob=blob, size=size, content_type=content_type)


def key_taken(db: Engine, key: str) -> bool:
    with db.connect() as conn:
        return uploads.key_taken(conn, key)


def find_upload(db: Engine, owner: str, key: str, retention_ms: int) -> UploadRecord | None:
    with db.connect() as conn:
        return uploads.find_upload(conn, owner, key, retention_ms)


def unknown_keys(db: Engine, owner: str, keys: Iterable[str], retention_ms: int) -> list[str]:
    with db.connect() as conn:
        return uploads.unknown_keys(conn, owner, keys, retention_ms)
