"""`TableJournal`: a held engine's way to the task table (the `Journal` of engines/base.py, and
the relay's `UpstreamJournal` of engines/dashscope/journal.py, whose verbs it adds).

A held engine's process claims all its tasks with one lease token, so one statement renews the
leases of all of them however many are in flight. State changes are the same transitions the
workers use (`ref2video.app.transitions`); the provider's side of a task is `store.upstream`.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from ..app import observe, transitions
from ..app.transitions import Held
from ..engines.base import HeldTask
from ..engines.dashscope.journal import Member
from ..protocol import Status
from ..store import members, upstream
from ..store.db import now_ms
from ..store.models import Task
from .manager import QueueManager
from .wakeup import Wakeup

__all__ = ["TableJournal"]

_COLUMNS = [Task.__table__.c[f.name] for f in dataclasses.fields(HeldTask)]


class TableJournal:
    """The journal of one held engine (`engine_name`) in one process, under its own token."""

    def __init__(self, queue: QueueManager, wakeup: Wakeup, engine_name: str, *, token: str | None = None,
                 on_requeue: Callable[[], None] | None = None) -> None:
        self.queue = queue
        self.db = queue.engine
        self.wakeup = wakeup
        self.engine_name = engine_name
        self.token = token or str(uuid.uuid4())
        self.lease_seconds = queue.lease_ms / 1000
        self.max_attempts = queue.max_attempts
        self._on_requeue = on_requeue or wakeup.notify

    # -- claiming and holding --------------------------------------------------------------------

    def claim(self, models: Collection[str]) -> HeldTask | None:
        row = self.queue.claim_row(models, self.token, _COLUMNS)
        return HeldTask(**{f.name: getattr(row, f.name) for f in dataclasses.fields(HeldTask)}) if row else None

    def subscribe(self) -> threading.Event:
        return self.wakeup.subscribe()

    def renew(self) -> int:
        with self.db.begin() as conn:
            return transitions.renew_all(conn, self.token, lease_ms=self.queue.lease_ms)

    def held(self) -> set[str]:
        with self.db.connect() as conn:
            return upstream.held_ids(conn, self.token)

    def cancel_requests(self) -> set[str]:
        with self.db.connect() as conn:
            return upstream.cancel_requests(conn, self.token)

    def release(self, task_id: str) -> bool:
        with observe.begin(self.db) as conn:
            done = transitions.release(conn, self._held(task_id))
        if done is Status.PENDING:
            observe.requeued(task_id, engine=self.engine_name)
            self._on_requeue()
        return done is not None

    def release_all(self) -> int:
        with observe.begin(self.db) as conn:
            done = transitions.release_all(conn, self.token)
        if done:
            self._on_requeue()
        return done

    # -- the provider's task ---------------------------------------------------------------------

    def intend(self, task_id: str, account: str) -> int | None:
        with self.db.begin() as conn:
            return upstream.intend(conn, self.token, task_id, account, self.engine_name)

    def clear_intent(self, task_id: str) -> bool:
        with self.db.begin() as conn:
            return upstream.clear_intent(conn, self.token, task_id)

    def record(self, task_id: str, upstream_id: str, status: str, *, adopted: bool = False) -> bool:
        """False when the task is no longer held or the upstream task already belongs to
        another of ours."""
        try:
            with self.db.begin() as conn:
                return upstream.record(conn, self.token, task_id, upstream_id, status, adopted=adopted)
        except IntegrityError:
            return False

    def set_status(self, statuses: dict[str, str]) -> None:
        with self.db.begin() as conn:
            upstream.set_status(conn, self.token, statuses)

    def recorded(self, upstream_ids: Sequence[str]) -> set[str]:
        with self.db.connect() as conn:
            return upstream.recorded(conn, upstream_ids)

    def siblings(self, task_id: str, account: str, model: str, start_ms: int, end_ms: int) -> int:
        with self.db.connect() as conn:
            return upstream.siblings(conn, task_id, account, model, start_ms, end_ms)

    # -- the processes sharing the provider's accounts ------------------------------------------

    def announce(self, rates: Mapping[str, tuple[float, float]], live_seconds: float, *,
                 joining: bool) -> tuple[str, list[Member]]:
        with self.db.begin() as conn:
            if joining:
                members.lock_joins(conn)
            now = now_ms()
            members.announce(conn, self.token, rates, expires_at=now + round(live_seconds * 1000), now=now)
            live = members.live(conn, rates, now=now)
        return self.token, [Member(*row) for row in live]

    def leave(self, linger_seconds: float) -> None:
        with self.db.begin() as conn:
            members.leave(conn, self.token, expires_at=now_ms() + round(linger_seconds * 1000))

    # -- the end of a task -----------------------------------------------------------------------

    def succeed(self, task_id: str, *, result_key: str, usage: dict[str, Any]) -> Status | None:
        with observe.begin(self.db) as conn:
            return transitions.succeed(conn, self._held(task_id), result_key=result_key, usage=usage,
                                       engine=self.engine_name, upstream_status=Status.SUCCEEDED.value)

    def fail(self, task_id: str, code: str, message: str) -> Status | None:
        with observe.begin(self.db) as conn:
            return transitions.fail(conn, self._held(task_id), code, message, engine=self.engine_name)

    def canceled(self, task_id: str) -> Status | None:
        with observe.begin(self.db) as conn:
            return transitions.canceled(conn, self._held(task_id), engine=self.engine_name)

    def retry(self, task: HeldTask, code: str, message: str, delay: float = 0.0) -> Status | None:
        """Give a task that never reached the provider back, or fail it when attempts are spent."""
        with observe.begin(self.db) as conn:
            done = transitions.retry(conn, self._held(task.id), attempt=task.attempt, max_attempts=self.max_attempts,
                                     code=code, message=message, delay_ms=int(delay * 1000), engine=self.engine_name)
        if done is Status.PENDING:
            observe.requeued(task.id, engine=self.engine_name, attempt=task.attempt)
            self._on_requeue()
        return done

    def _held(self, task_id: str) -> Held:
        return Held(task_id, self.token)
