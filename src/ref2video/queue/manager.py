"""The worker side of the task table: claim, renew and end tasks, each in its own transaction.

The writes themselves are `ref2video.app.transitions` (compare-and-sets on the claim's lease
token and state); this class opens the transaction each runs in and wakes the queue's
listeners when a task goes back to it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Engine

from ..app import observe, transitions
from ..app.transitions import Held
from ..protocol import Status
from ..store.db import is_postgres, now_ms
from ..store import tasks as store
from ..store.tasks import RECORD_COLUMNS, TaskRecord

__all__ = ["Claim", "LeaseLost", "QueueManager"]


class LeaseLost(Exception):
    """The claim is no longer ours: it lapsed and was reaped, or the task was canceled."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A task held by this worker until `lease_token` stops matching the row."""

    task: TaskRecord
    lease_token: str

    @property
    def held(self) -> Held:
        return Held(self.task.id, self.lease_token)


class QueueManager:
    """Claims, renews and ends tasks. One instance per process; thread-safe."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 30.0,
        max_attempts: int = 3,
        on_requeue: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.lease_ms = int(lease_seconds * 1000)
        self.max_attempts = max_attempts
        self._on_requeue = on_requeue or (lambda: None)

    def claim(self, models: Collection[str], *, token: str | None = None) -> Claim | None:
        """Take the oldest claimable task of one of `models`, or None."""
        token = token or str(uuid.uuid4())
        row = self.claim_row(models, token, RECORD_COLUMNS)
        return Claim(TaskRecord.from_row(row), token) if row else None

    def claim_row(self, models: Collection[str], token: str, columns: Sequence[Any]) -> Any:
        """The claim, returning `columns` of the row taken (or None). An engine that holds many
        tasks claims them all with one token, to renew them all in one statement."""
        if not models:
            return None
        with observe.begin(self.engine) as conn:
            return transitions.claim(conn, models, token, lease_ms=self.lease_ms,
                                     skip_locked=is_postgres(self.engine), columns=columns)

    def next_due(self, models: Collection[str]) -> float | None:
        """Seconds until a task of `models` waiting out a retry's backoff becomes claimable, or
        None: an idle worker sleeps no longer than that, since nothing announces the moment."""
        if not models:
            return None
        now = now_ms()
        with self.engine.connect() as conn:
            due = store.next_run_after(conn, models, now)
        return None if due is None else (due - now) / 1000

    def heartbeat(self, claim: Claim, progress: int | None = None) -> bool:
        """Renew the lease (and record progress); True when a cancel was requested."""
        with observe.begin(self.engine) as conn:
            asked = transitions.heartbeat(conn, claim.held, lease_ms=self.lease_ms, progress=progress)
        if asked is None:
            raise LeaseLost(claim.task.id)
        return asked

    def cancel_requested(self, claim: Claim) -> bool:
        with self.engine.connect() as conn:
            asked = store.cancel_requested(conn, claim.task.id, claim.lease_token)
        if asked is None:
            raise LeaseLost(claim.task.id)
        return asked

    # Every verb below that ends or gives back a claim returns the state the task ended in,
    # or None when the claim was no longer ours.

    def succeed(self, claim: Claim, *, result_key: str, usage: dict[str, Any], engine: str) -> Status | None:
        with observe.begin(self.engine) as conn:
            return transitions.succeed(conn, claim.held, result_key=result_key, usage=usage, engine=engine)

    def fail(self, claim: Claim, code: str, message: str, *, engine: str | None = None) -> Status | None:
        with observe.begin(self.engine) as conn:
            return transitions.fail(conn, claim.held, code, message, engine=engine)

    def mark_canceled(self, claim: Claim, *, engine: str | None = None) -> Status | None:
        with observe.begin(self.engine) as conn:
            return transitions.canceled(conn, claim.held, engine=engine)

    def retry(self, claim: Claim, code: str, message: str, delay: float = 0.0) -> Status | None:
        """Give the task back for another attempt, or fail it when attempts are spent."""
        with observe.begin(self.engine) as conn:
            done = transitions.retry(conn, claim.held, attempt=claim.task.attempt, max_attempts=self.max_attempts,
                                     code=code, message=message, delay_ms=int(delay * 1000))
        if done is Status.PENDING:
            observe.requeued(claim.task.id, attempt=claim.task.attempt)
            self._on_requeue()
        return done

    def release(self, claim: Claim) -> Status | None:
        """Hand an unfinished task back on shutdown, without spending an attempt."""
        with observe.begin(self.engine) as conn:
            done = transitions.release(conn, claim.held)
        if done is Status.PENDING:
            observe.requeued(claim.task.id, attempt=claim.task.attempt)
            self._on_requeue()
        return done

    def reap(self) -> tuple[int, int]:
        """Requeue (or fail) tasks whose lease lapsed; (requeued, failed)."""
        with observe.begin(self.engine) as conn:
            requeued, failed = transitions.reap(conn, max_attempts=self.max_attempts)
        if requeued:
            self._on_requeue()
        return requeued, failed
