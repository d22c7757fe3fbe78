"""Idempotency keys on creates (docs/limits.md): the same `Idempotency-Key` from the same owner
with the same body answers the task the first request made; with another body it is refused.

The key is bound in the transaction that inserts the task, after the insert, by the primary
key of `idempotency_keys` (owner, key): of two requests with one key, on one process or
several, the second waits at that insert until the first commits (PostgreSQL; on SQLite the
first write already holds the one write lock), then finds the key taken, rolls its own task
back and answers the first one's. If the first rolls back instead (refused by a quota, or by
billing), the second binds the key itself.

A key lives for 24 hours, or the task retention if that is shorter, so the task it names is
always there to answer; after that the key may be used again, and the retention sweep removes
its row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from sqlalchemy import Connection, Engine

from ..errors import InvalidParameter, ServiceUnavailable
from ..store import idempotency as store
from ..store import tasks as task_store
from ..store.db import now_ms
from ..store.keys import Principal
from ..store.tasks import TaskRecord

__all__ = ["HEADER", "LIFETIME_MS", "MAX_KEY_LENGTH", "Claim", "Replay", "claim_of", "body_hash", "lifetime_ms",
           "bind", "replay", "sweep"]

HEADER = "Idempotency-Key"
LIFETIME_MS = 24 * 3600 * 1000
MAX_KEY_LENGTH = 255


@dataclasses.dataclass
class Claim:
    """One create's idempotency key and the hash of its body; `replayed` is set when the
    answer is the task an earlier request made."""

    key: str
    body_hash: str
    replayed: bool = False


class Replay(Exception):
    """Raised inside the create's transaction (so it rolls back) when the key made a task before."""

    def __init__(self, claim: Claim, task_id: str) -> None:
        super().__init__(task_id)
        self.claim = claim
        self.task_id = task_id


def body_hash(body: Any) -> str:
    """SHA-256 of the body's JSON in a canonical form: the same request sent again matches
    whatever its key order and spacing."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_of(header: str | None, body: Any) -> Claim | None:
    """The claim of a create with the `Idempotency-Key` header `header` (None without one)."""
    if header is None:
        return None
    key = header.strip()
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise InvalidParameter(f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return Claim(key=key, body_hash=body_hash(body))


def lifetime_ms(retention_ms: int) -> int:
    """How long a key binds: 24 hours, or the retention if shorter (its task must still exist)."""
    return min(LIFETIME_MS, retention_ms)


def bind(conn: Connection, owner: str, claim: Claim, task: TaskRecord, *, retention_ms: int) -> None:
    """Bind `claim` to the task just inserted on `conn`. Raises `Replay` when the key already
    names a task made from the same body, `InvalidParameter` when it was used with another."""
    cutoff = task.submitted_at - lifetime_ms(retention_ms)
    if store.claim_key(conn, owner, claim.key, body_hash=claim.body_hash, task_id=task.id,
                       now_ms=task.submitted_at, cutoff_ms=cutoff):
        return
    found = store.find_key(conn, owner, claim.key)
    earlier_hash, task_id = found or (None, None)
    if task_id is None:  # swept between the two statements: at the very end of its life
        raise ServiceUnavailable("the Idempotency-Key was expiring as this request came; send it again")
    if earlier_hash != claim.body_hash:
        raise InvalidParameter(
            f"the {HEADER} {claim.key[:80]!r} was used with a different request body in the last "
            f"{lifetime_ms(retention_ms) // 3_600_000} hours; send that body again, or use a new key"
        )
    raise Replay(claim, task_id)


def replay(db: Engine, principal: Principal, earlier: Replay, *, retention_ms: int) -> TaskRecord:
    """The task an earlier request with the same key made, as it is now."""
    with db.connect() as conn:
        task = task_store.get_task(conn, principal.owner, earlier.task_id, retention_ms)
    if task is None:  # only at the very end of the key's life, as retention removes the task
        raise ServiceUnavailable("the task of this Idempotency-Key was expiring as this request came; send it again")
    earlier.claim.replayed = True
    return task


def sweep(conn: Connection, retention_ms: int) -> int:
    """Remove keys past their lifetime; how many went."""
    return store.delete_expired(conn, now_ms() - lifetime_ms(retention_ms))
