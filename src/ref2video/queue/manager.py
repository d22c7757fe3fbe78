"""All of the worker side of the task table, as lifecycle verbs.

Each verb is one statement. Claiming is an atomic UPDATE of the oldest claimable row
(`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer at a time). Every later write
is a compare-and-set on the claim's lease token and state, so a worker whose lease lapsed can
never finish, fail or charge a task that someone else now holds.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Engine, and_, case, select, update

from ..protocol import Status
from ..store.db import is_postgres, now_ms
from ..store.models import Task
from ..store.tasks import TaskRecord, RECORD_COLUMNS

__all__ = ["Claim", "LeaseLost", "QueueManager"]


class LeaseLost(Exception):
    """The claim is no longer ours: it lapsed and was reaped, or the task was canceled."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A task held by this worker until `lease_token` stops matching the row."""

    task: TaskRecord
    lease_token: str


class QueueManager:
    """Claims, renews and finishes tasks. One instance per process; thread-safe."""

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
        """The claim as one statement, returning `columns` of the row taken (or None). A relay
        claims every task with its process's one token, to renew them all in one statement."""
        now = now_ms()
        oldest = (
            select(Task.id)
            .where(Task.status == Status.PENDING.value, Task.run_after <= now, Task.model.in_(list(models)))
            .order_by(Task.submitted_at, Task.id)
            .limit(1)
        )
        if is_postgres(self.engine):
            oldest = oldest.with_for_update(skip_locked=True)
        stmt = (
            update(Task)
            .where(Task.id == oldest.scalar_subquery(), Task.status == Status.PENDING.value)
            .values(
                status=Status.RUNNING.value,
                attempt=Task.attempt + 1,
                lease_token=token,
                lease_expires_at=now + self.lease_ms,
                scheduled_at=case((Task.scheduled_at.is_(None), now), else_=Task.scheduled_at),
                progress=0,
            )
            .returning(*columns)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first()

    def heartbeat(self, claim: Claim, progress: int | None = None) -> bool:
        """Renew the lease (and record progress); True when a cancel was requested."""
        values: dict[str, Any] = {"lease_expires_at": now_ms() + self.lease_ms}
        if progress is not None:
            values["progress"] = progress
        with self.engine.begin() as conn:
            row = conn.execute(
                update(Task).where(self._held(claim)).values(**values).returning(Task.cancel_requested)
            ).first()
        if row is None:
            raise LeaseLost(claim.task.id)
        return bool(row.cancel_requested)

    def cancel_requested(self, claim: Claim) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(select(Task.cancel_requested).where(self._held(claim))).first()
        if row is None:
            raise LeaseLost(claim.task.id)
        return bool(row.cancel_requested)

    # Every verb below that ends or gives back a claim returns the state the task ended in,
    # or None when the claim was no longer ours. A task whose owner was told its cancel was
    # accepted ends CANCELED whatever the engine did meanwhile (PROTOCOL.md section 4): a
    # result that finished at that moment is not recorded, and the caller deletes its file.

    def succeed(self, claim: Claim, *, result_key: str, usage: dict[str, Any], engine: str) -> Status | None:
        return self._finish(
            claim, Status.SUCCEEDED, progress=100, result_key=result_key, usage=usage, engine=engine
        )

    def fail(self, claim: Claim, code: str, message: str, *, engine: str | None = None) -> Status | None:
        return self._finish(claim, Status.FAILED, error_code=code, error_message=message[:2000], engine=engine)

    def mark_canceled(self, claim: Claim) -> Status | None:
        return self._finish(claim, Status.CANCELED)

    def retry(self, claim: Claim, code: str, message: str, delay: float = 0.0) -> Status | None:
        """Give the task back for another attempt, or fail it when attempts are spent."""
        if claim.task.attempt >= self.max_attempts:
            return self.fail(claim, code, f"{message} (gave up after {claim.task.attempt} attempts)")
        done = self._finish(claim, Status.PENDING, **self._requeued(), run_after=now_ms() + int(delay * 1000))
        self._notify()
        return done

    def release(self, claim: Claim) -> Status | None:
        """Hand an unfinished task back on shutdown, without spending an attempt."""
        done = self._finish(claim, Status.PENDING, **self._requeued(), attempt=Task.attempt - 1)
        self._notify()
        return done

    def reap(self) -> tuple[int, int]:
        """Requeue tasks whose lease lapsed, or fail them when attempts are spent.

        A task whose submit to the provider may have left (the relay's intent) is always
        requeued: failing it could abandon a task the provider runs and charges for, and the
        relay that claims it next reconciles rather than submits. Returns (requeued, failed).
        """
        now = now_ms()
        lapsed = and_(Task.status == Status.RUNNING.value, Task.lease_expires_at < now)
        local = Task.upstream_submit_at.is_(None)
        spent = and_(Task.attempt >= self.max_attempts, local)
        with self.engine.begin() as conn:
            # A local task whose cancel was accepted ends as promised; a relayed one goes back
            # to the queue, so that the next relay passes the cancel on to the provider.
            conn.execute(
                update(Task)
                .where(lapsed, local, Task.cancel_requested)
                .values(status=Status.CANCELED.value, ended_at=now, lease_token=None, lease_expires_at=None)
            )
            failed = conn.execute(
                update(Task)
                .where(lapsed, spent)
                .values(
                    status=Status.FAILED.value, ended_at=now, lease_token=None, lease_expires_at=None,
                    error_code="InternalError",
                    error_message=(
                        f"the worker running this task stopped answering {self.max_attempts} times"
                    ),
                )
            ).rowcount
            requeued = conn.execute(
                update(Task).where(lapsed, ~spent).values(
                    status=Status.PENDING.value, lease_token=None, lease_expires_at=None, progress=0, run_after=now)
            ).rowcount
        if requeued:
            self._notify()
        return requeued, failed

    def _finish(self, claim: Claim, status: Status, **values: Any) -> Status | None:
        """Move a held task to `status` (PENDING: back to the queue), or to CANCELED when its
        cancel was accepted meanwhile. One transaction, two compare-and-sets."""
        now = now_ms()
        if status is not Status.PENDING:
            values.update(ended_at=now)
        with self.engine.begin() as conn:
            if status is not Status.CANCELED:
                done = conn.execute(
                    update(Task)
                    .where(self._held(claim), ~Task.cancel_requested)
                    .values(status=status.value, lease_token=None, lease_expires_at=None, **values)
                ).rowcount
                if done:
                    return status
            promised = [] if status is Status.CANCELED else [Task.cancel_requested]
            canceled = conn.execute(
                update(Task)
                .where(self._held(claim), *promised)
                .values(status=Status.CANCELED.value, ended_at=now, lease_token=None, lease_expires_at=None)
            ).rowcount
        return Status.CANCELED if canceled else None

    @staticmethod
    def _held(claim: Claim) -> Any:
        return and_(
            Task.id == claim.task.id,
            Task.status == Status.RUNNING.value,
            Task.lease_token == claim.lease_token,
        )

    @staticmethod
    def _requeued() -> dict[str, Any]:
        """What goes with a move back to PENDING, besides the status and the lease."""
        return dict(progress=0)

    def _notify(self) -> None:
        self._on_requeue()
