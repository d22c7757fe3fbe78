"""The relay's side of the task table: every statement the DashScope relay makes, as verbs.

A relay process claims its tasks with one lease token of its own (`QueueManager.claim_row`),
so one statement renews the leases of all of them however many are in flight. Every write is
a compare-and-set on that token and the RUNNING state, like the worker's, so a relay whose
lease lapsed (and whose tasks another process has adopted) can never finish one of them.

The order of writes is what makes "never submit twice" hold: `intend()` records that a submit
is about to leave (and with which account) before it is sent; `record()` stores the upstream
id afterwards. A row with an intent and no upstream id is an orphan: it is reconciled through
the provider's task list, never submitted blindly again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.exc import IntegrityError

from ..protocol import Status
from ..store.db import now_ms
from ..store.models import Task
from .manager import QueueManager

__all__ = ["RelayManager", "RelayTask"]

ENGINE_NAME = "dashscope"


@dataclasses.dataclass(frozen=True)
class RelayTask:
    """A claimed task, as much of it as the relay needs."""

    id: str
    owner: str
    model: str
    spec: dict[str, Any]
    attempt: int
    cancel_requested: bool
    upstream_id: str | None
    upstream_account: str | None
    upstream_submit_at: int | None
    upstream_status: str | None
    upstream_adopted: bool

    @classmethod
    def from_row(cls, row: Any) -> RelayTask:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


_COLUMNS = [Task.__table__.c[f.name] for f in dataclasses.fields(RelayTask)]
_REQUEUED: dict[str, Any] = dict(status=Status.PENDING.value, lease_token=None, lease_expires_at=None, progress=0)


class RelayManager:
    """Claims, renews and finishes the tasks one relay process holds under `token`."""

    def __init__(self, queue: QueueManager, token: str, *, on_requeue: Callable[[], None] | None = None) -> None:
        self.queue = queue
        self.engine: Engine = queue.engine
        self.token = token
        self.max_attempts = queue.max_attempts
        self._on_requeue = on_requeue or (lambda: None)

    # -- claiming and holding ------------------------------------------------------------------

    def claim(self, models: Collection[str]) -> RelayTask | None:
        row = self.queue.claim_row(models, self.token, _COLUMNS)
        return RelayTask.from_row(row) if row else None

    def renew(self) -> int:
        """Extend the lease of every task this relay holds; returns how many it holds."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(Task).where(self._mine()).values(lease_expires_at=now_ms() + self.queue.lease_ms)
            ).rowcount

    def held(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(Task.id).where(self._mine())).scalars())

    def cancel_requests(self) -> set[str]:
        """Ids of held tasks whose owner asked for a cancel."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(Task.id).where(self._mine(), Task.cancel_requested)).scalars())

    def release_all(self) -> int:
        """On shutdown: hand every held task back to the queue without spending an attempt;
        the next relay to claim one finds its upstream id (or its intent) and carries on."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(Task).where(self._mine()).values(**_REQUEUED, attempt=Task.attempt - 1, run_after=now_ms())
            ).rowcount
        if done:
            self._on_requeue()
        return done

    def release(self, task_id: str) -> bool:
        """Hand one held task back to the queue without spending an attempt."""
        done = self._update(task_id, **_REQUEUED, attempt=Task.attempt - 1, run_after=now_ms())
        if done:
            self._on_requeue()
        return done

    # -- the submit, in two writes around it ---------------------------------------------------

    def intend(self, task_id: str, account: str) -> int | None:
        """Record that a submit with `account` is about to leave; the moment, or None when the
        task is no longer ours."""
        now = now_ms()
        done = self._update(task_id, Task.upstream_id.is_(None), upstream_submit_at=now,
                            upstream_account=account, engine=ENGINE_NAME)
        return now if done else None

    def clear_intent(self, task_id: str) -> bool:
        """The submit certainly did not reach the provider (refused before acting)."""
        return self._update(task_id, Task.upstream_id.is_(None), upstream_submit_at=None, upstream_account=None)

    def record(self, task_id: str, upstream_id: str, status: str, *, adopted: bool = False) -> bool:
        """Store the provider's task id; False when the task is no longer ours or the upstream
        task already belongs to another of ours (the unique index refuses a second owner)."""
        try:
            return self._update(task_id, Task.upstream_id.is_(None), upstream_id=upstream_id,
                                upstream_status=status, upstream_adopted=adopted)
        except IntegrityError:
            return False

    def set_status(self, statuses: dict[str, str]) -> None:
        """Remember the provider's latest state of held tasks (only changes are passed)."""
        by_status: dict[str, list[str]] = {}
        for task_id, status in statuses.items():
            by_status.setdefault(status, []).append(task_id)
        with self.engine.begin() as conn:
            for status, ids in by_status.items():
                conn.execute(update(Task).where(self._mine(), Task.id.in_(ids)).values(upstream_status=status))

    # -- reconciling orphans -------------------------------------------------------------------

    def recorded(self, upstream_ids: Sequence[str]) -> set[str]:
        """Which of these upstream tasks already belong to a task of ours."""
        if not upstream_ids:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(select(Task.upstream_id).where(Task.upstream_id.in_(list(upstream_ids)))).scalars())

    def siblings(self, task_id: str, account: str, model: str, start_ms: int, end_ms: int) -> int:
        """Other unfinished tasks of ours whose submit with this account and model left in the
        window and is not recorded yet: while there are any, one upstream candidate is not
        enough to say which task it belongs to."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(Task).where(
                    Task.upstream_account == account, Task.upstream_submit_at.between(start_ms, end_ms),
                    Task.upstream_id.is_(None), Task.model == model, Task.id != task_id,
                    Task.status.in_([Status.PENDING.value, Status.RUNNING.value]))
            ).scalar_one()

    # -- the end of a task ---------------------------------------------------------------------

    # The verbs that end a task return the state it ended in, or None when it was no longer
    # ours. A task whose cancel was accepted ends CANCELED whatever the provider did: the owner
    # was promised that (PROTOCOL.md section 4), so a result that arrives is not recorded.

    def succeed(self, task_id: str, *, result_key: str, usage: dict[str, Any]) -> Status | None:
        return self._finish(task_id, Status.SUCCEEDED, progress=100, result_key=result_key, usage=usage,
                            upstream_status=Status.SUCCEEDED.value)

    def fail(self, task_id: str, code: str, message: str) -> Status | None:
        return self._finish(task_id, Status.FAILED, error_code=code, error_message=message[:2000])

    def canceled(self, task_id: str) -> Status | None:
        return self._finish(task_id, Status.CANCELED)

    def retry(self, task: RelayTask, code: str, message: str, delay: float = 0.0) -> Status | None:
        """Give a task that never reached the provider back for another attempt, or fail it
        when attempts are spent."""
        if task.attempt >= self.max_attempts:
            return self.fail(task.id, code, f"{message} (gave up after {task.attempt} attempts)")
        done = self._finish(task.id, Status.PENDING, run_after=now_ms() + int(delay * 1000))
        self._on_requeue()
        return done

    # -- plumbing ------------------------------------------------------------------------------

    def _mine(self) -> Any:
        return and_(Task.lease_token == self.token, Task.status == Status.RUNNING.value)

    def _finish(self, task_id: str, status: Status, **values: Any) -> Status | None:
        """Move a held task to `status` (PENDING: back to the queue), or to CANCELED when its
        cancel was accepted meanwhile. One transaction, two compare-and-sets."""
        now = now_ms()
        held = and_(Task.id == task_id, self._mine())
        ended = dict(ended_at=now, lease_token=None, lease_expires_at=None, engine=ENGINE_NAME)
        with self.engine.begin() as conn:
            if status is not Status.CANCELED:
                moved = dict(_REQUEUED) if status is Status.PENDING else dict(ended, status=status.value)
                done = conn.execute(update(Task).where(held, ~Task.cancel_requested).values(**moved, **values))
                if done.rowcount == 1:
                    return status
            promised = [] if status is Status.CANCELED else [Task.cancel_requested]
            canceled = conn.execute(update(Task).where(held, *promised).values(**ended, status=Status.CANCELED.value))
        return Status.CANCELED if canceled.rowcount == 1 else None

    def _update(self, task_id: str, *where: Any, **values: Any) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(Task).where(Task.id == task_id, self._mine(), *where).values(**values))
        return done.rowcount == 1
