"""Whether this process can do its work: reach its database and write to it."""

from __future__ import annotations

from sqlalchemy import Engine, insert, text, update
from sqlalchemy.exc import DBAPIError

from ..store.db import now_ms
from ..store.models import HealthProbe

__all__ = ["probe"]


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
