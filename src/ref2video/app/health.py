"""Whether this process can do its work: reach its database and write to it."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import Engine, insert, text, update
from sqlalchemy.exc import DBAPIError

from ..store.db import now_ms
from ..storage.base import Storage
from ..store.models import HealthProbe

__all__ = ["probe", "probe_storage"]


def probe(db: Engine, name: str) -> str | None:
    """None when the database answers and takes a write; else "unreachable" or "not writable"
    (a full disk or a read-only file: reads still work there, every write fails)."""
    try:
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError:
        return "unreachable"
    try:
        with db.begin() as conn:
            at = now_ms()
            if conn.execute(update(HealthProbe).where(HealthProbe.name == name).values(at=at)).rowcount == 0:
                conn.execute(insert(HealthProbe).values(name=name, at=at))
    except DBAPIError:
        return "not writable"
    return None


def probe_storage(storage: Storage) -> str | None:
    """None when `storage` takes a small object and lets it be removed; else what failed.
    Only the `Storage` interface is used, so any backend (a folder, a bucket) is probed the same
    way. The probe's key is unique (a crash between put and delete leaves one file, which the
    orphan sweep removes once it is older than its grace)."""
    key = f"health-probe-{uuid.uuid4().hex}.tmp"
    fd, name = tempfile.mkstemp(prefix="ref2video-probe-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"ok")
        try:
            storage.put(key, Path(name))
        except Exception as exc:  # any backend's failure: a full disk, a refused bucket
            return f"not writable ({type(exc).__name__})"
        try:
            storage.delete(key)
        except Exception as exc:
            return f"not deletable ({type(exc).__name__})"
    finally:
        Path(name).unlink(missing_ok=True)
    return None
