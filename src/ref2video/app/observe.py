"""What a task's changes tell the operator, told only once they are committed.

`effects.after` (inside the transaction of a state change) and the ledger note what happened
on the transaction's connection: memory only, no I/O. A caller that opens the transaction with
`observe.begin(db)` instead of `db.begin()` has the notes published when, and only when, the
commit has returned: a log line per task transition, the transition counter, the task-duration
histogram and the credits charged. A rolled-back transaction publishes nothing.

Why not an SQLAlchemy event? Core's `ConnectionEvents.commit` fires *before* the DBAPI commit
(which may still fail), and Core has no after-commit event (the ORM Session's `after_commit` is
for sessions, which this project does not use). So the notes are kept in `Connection.info`,
dropped at the start of every transaction (the `begin` event below, so a transaction opened
with a plain `db.begin()` leaves nothing behind for the next user of the pooled connection), and
published by `begin()` after its `with` block, where the commit is known to have succeeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine, event

from .. import metrics
from ..protocol import Status

__all__ = ["begin", "moved", "charged", "publish", "requeued"]

log = logging.getLogger("ref2video.tasks")

_KEY = "ref2video.observed"
_ENDS = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
_MAX_CLAIMS = 100_000  # claims remembered for durations (a task reaped elsewhere never ends here)


@dataclasses.dataclass(frozen=True)
class _Moved:
    task_ids: tuple[str, ...]
    to: Status
    source: Status | None  # None: created
    engine: str | None
    attempt: int | None


@dataclasses.dataclass(frozen=True)
class _Charged:
    model: str
    amount: int


_Note = _Moved | _Charged

# task id -> (monotonic time of its claim in this process, the claim's attempt)
_claims: dict[str, tuple[float, int | None]] = {}
_claims_lock = threading.Lock()


@event.listens_for(Engine, "begin")
def _fresh(conn: Connection) -> None:
    conn.info.pop(_KEY, None)


def _notes(conn: Connection) -> list[_Note]:
    notes: list[_Note] = conn.info.setdefault(_KEY, [])
    return notes


def moved(conn: Connection, task_ids: Sequence[str], to: Status, *, source: Status | None,
          engine: str | None = None, attempt: int | None = None) -> None:
    """`task_ids` moved from `source` (None: created) to `to` in `conn`'s transaction."""
    if task_ids:
        _notes(conn).append(_Moved(tuple(task_ids), to, source, engine, attempt))


def charged(conn: Connection, model: str, amount: int) -> None:
    """`amount` micro-credits were charged for a task of `model` in `conn`'s transaction."""
    if amount:
        _notes(conn).append(_Charged(model, amount))


def requeued(task_id: str, *, engine: str | None = None, attempt: int | None = None) -> None:
    """Publish, after its commit, that a held task went back to the queue (retry or release:
    verbs whose compare-and-set says only how many rows it moved)."""
    publish([_Moved((task_id,), Status.PENDING, Status.RUNNING, engine, attempt)])


@contextlib.contextmanager
def begin(db: Engine) -> Iterator[Connection]:
    """`db.begin()`, publishing what its transaction noted once it has committed."""
    with db.begin() as conn:
        try:
            yield conn
        finally:
            notes: list[_Note] = conn.info.pop(_KEY, [])
    publish(notes)


def created(task_ids: Sequence[str]) -> None:
    """Publish creates already committed by a transaction that noted nothing (`app.batches`)."""
    if task_ids:
        publish([_Moved(tuple(task_ids), Status.PENDING, None, None, None)])


def publish(notes: Sequence[_Note]) -> None:
    for note in notes:
        if isinstance(note, _Charged):
            metrics.CREDITS_CHARGED.labels(model=note.model).inc(note.amount)
        else:
            _publish_move(note)


def _publish_move(note: _Moved) -> None:
    now = time.monotonic()
    metrics.TRANSITIONS.labels(to=note.to.value).inc(len(note.task_ids))
    for task_id in note.task_ids:
        elapsed: float | None = None
        attempt = note.attempt
        with _claims_lock:
            if note.to is Status.RUNNING:
                _claims[task_id] = (now, attempt)
                if len(_claims) > _MAX_CLAIMS:
                    del _claims[next(iter(_claims))]
            elif (claimed := _claims.pop(task_id, None)) is not None:  # requeued or ended
                elapsed = now - claimed[0]
                attempt = attempt or claimed[1]
        if note.to in _ENDS and elapsed is not None:
            metrics.TASK_DURATION.labels(engine=note.engine or "unknown", status=note.to.value).observe(elapsed)
        source = note.source.value if note.source else "new"
        details = [f"engine {note.engine}"] if note.engine else []
        if attempt:
            details.append(f"attempt {attempt}")
        suffix = f" ({', '.join(details)})" if details else ""
        log.info("task %s moved %s -> %s%s", task_id, source, note.to.value, suffix,
                 extra={"task_id": task_id, "fields": {
                     "event": "transition", "from": source, "to": note.to.value, "engine": note.engine,
                     "attempt": attempt, "duration_s": None if elapsed is None else round(elapsed, 3)}})
