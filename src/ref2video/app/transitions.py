"""Every change of a task's state, and nothing else, as compare-and-set writes.

This module is the only writer of `tasks.status` (tests/test_layers.py says so). Each function
takes the connection whose transaction it runs in and opens none itself, so whatever must
happen with a state change (a ledger entry, an outbox row) commits with it or not at all:

    with db.begin() as conn:
        ended = transitions.succeed(conn, held, result_key=key, usage=usage, engine="preview")
        ...  # more writes in the same transaction

A claimed task is `Held` by a lease token. Every write to a held task matches that token and
the RUNNING state, so a holder whose lease lapsed (and was reaped) can never end, fail or charge
a task that someone else now holds. The writes that end or give back a held task return the
state it ended in, or None when it was no longer held. A task whose owner was told that its
cancel was accepted ends CANCELED whatever its engine did meanwhile (docs/protocol.md, cancel).

Every change a task's owner could care about (it started, it ended, it expired) is passed to
`effects.after` in the same transaction: the ledger settles holds there, the outbox queues
webhooks. Nothing else writes a task's state, so nothing else needs to remember to do that.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, delete, insert, or_, select, update

from ..protocol import Status
from ..spec import TaskSpec
from ..store.db import now_ms
from ..store.keys import Principal
from ..store.models import Task
from ..store.tasks import TaskRecord
from . import effects

__all__ = [
    "Held", "create", "create_many", "claim", "heartbeat", "renew_all", "succeed", "fail", "canceled", "retry",
    "release", "release_all", "cancel", "reap", "expire",
]

_UNLEASED: dict[str, Any] = dict(lease_token=None, lease_expires_at=None)
# Built once: every create is a poll's worth of CPU cheaper than building `insert(Task).values(...)`
# (an ORM-coerced statement and its cache key) each time.
_INSERT = insert(Task)


@dataclasses.dataclass(frozen=True)
class Held:
    """A claimed task, named by its id and the lease token it was claimed with."""

    task_id: str
    token: str


# -- the owner's side ----------------------------------------------------------------------------


def create(conn: Connection, spec: TaskSpec, principal: Principal, *, callback_url: str | None = None) -> TaskRecord:
    """A new PENDING task; `callback_url` also gets its webhooks (X-Ref2video-Callback)."""
    return create_many(conn, [(spec, principal)], callback_url=callback_url)[0]


def create_many(conn: Connection, new: Sequence[tuple[TaskSpec, Principal]], *,
                callback_url: str | None = None) -> list[TaskRecord]:
    """New PENDING tasks, one for each (spec, principal), in one statement (the creates that
    the API commits together: `app.batches`)."""
    now = now_ms()
    rows: list[dict[str, Any]] = [
        dict(id=str(uuid.uuid4()), owner=principal.owner, key_id=principal.key_id, model=spec.model,
             status=Status.PENDING.value, spec=spec.to_json(), progress=0, attempt=0,
             cancel_requested=False, run_after=now, submitted_at=now, callback_url=callback_url)
        for spec, principal in new
    ]
    conn.execute(_INSERT, rows if len(rows) > 1 else rows[0])
    return [
        TaskRecord(
            id=values["id"], owner=values["owner"], model=values["model"], status=Status.PENDING, spec=values["spec"],
            progress=0, attempt=0, cancel_requested=False, submitted_at=now, scheduled_at=None, ended_at=None,
            engine=None, result_key=None, usage=None, error_code=None, error_message=None,
        )
        for values in rows
    ]


def cancel(conn: Connection, owner: str, task_id: str) -> Status | None:
    """Cancel the owner's PENDING task, or ask a RUNNING one to stop (a promise: it will end
    CANCELED). A task sent to the provider is only asked to stop, and only while the provider
    may still hold it PENDING: the provider cancels nothing that runs. Returns CANCELED or
    RUNNING for what was done, None when nothing could be."""
    mine = and_(Task.id == task_id, Task.owner == owner)
    local = Task.upstream_submit_at.is_(None)
    done = conn.execute(
        update(Task)
        .where(mine, local, Task.status == Status.PENDING.value)
        .values(status=Status.CANCELED.value, ended_at=now_ms())
    )
    if done.rowcount == 1:
        effects.after(conn, [task_id], Status.CANCELED, source=Status.PENDING)
        return Status.CANCELED
    cancellable = or_(
        and_(local, Task.status == Status.RUNNING.value),
        and_(~local, Task.status.in_([Status.PENDING.value, Status.RUNNING.value]),
             or_(Task.upstream_status.is_(None), Task.upstream_status == Status.PENDING.value)),
    )
    asked = conn.execute(update(Task).where(mine, cancellable).values(cancel_requested=True))
    return Status.RUNNING if asked.rowcount == 1 else None


# -- the holder's side ---------------------------------------------------------------------------


def claim(conn: Connection, models: Collection[str], token: str, *, lease_ms: int, skip_locked: bool,
          columns: Sequence[Any]) -> Any:
    """Take the oldest claimable task of one of `models` under `token`; `columns` of its row,
    or None. One statement: an UPDATE of the oldest PENDING row (`FOR UPDATE SKIP LOCKED` on
    PostgreSQL; SQLite has one writer at a time)."""
    now = now_ms()
    oldest = (
        select(Task.id)
        .where(Task.status == Status.PENDING.value, Task.run_after <= now, Task.model.in_(list(models)))
        .order_by(Task.submitted_at, Task.id)
        .limit(1)
    )
    if skip_locked:
        oldest = oldest.with_for_update(skip_locked=True)
    stmt = (
        update(Task)
        .where(Task.id == oldest.scalar_subquery(), Task.status == Status.PENDING.value)
        .values(
            status=Status.RUNNING.value, attempt=Task.attempt + 1, lease_token=token,
            lease_expires_at=now + lease_ms, progress=0,
            scheduled_at=case((Task.scheduled_at.is_(None), now), else_=Task.scheduled_at),
        )
        .returning(*columns, *([] if any(getattr(c, "name", None) == "id" for c in columns) else [Task.id]))
    )
    row = conn.execute(stmt).first()
    if row is not None:
        effects.after(conn, [row.id], Status.RUNNING, attempt=getattr(row, "attempt", None))
    return row


def heartbeat(conn: Connection, held: Held, *, lease_ms: int, progress: int | None = None) -> bool | None:
    """Renew the lease (and record progress): whether a cancel was requested, None when the
    task is no longer held."""
    values: dict[str, Any] = {"lease_expires_at": now_ms() + lease_ms}
    if progress is not None:
        values["progress"] = progress
    row = conn.execute(update(Task).where(_held(held)).values(**values).returning(Task.cancel_requested)).first()
    return None if row is None else bool(row.cancel_requested)


def renew_all(conn: Connection, token: str, *, lease_ms: int) -> int:
    """Extend the lease of every task held under `token` (an engine that holds many tasks
    claims them all with one token); returns how many there are."""
    return conn.execute(update(Task).where(holding(token)).values(lease_expires_at=now_ms() + lease_ms)).rowcount


def succeed(conn: Connection, held: Held, *, result_key: str, usage: dict[str, Any], engine: str,
            **extra: Any) -> Status | None:
    return _end(conn, held, Status.SUCCEEDED, engine, progress=100, result_key=result_key, usage=usage, **extra)


def fail(conn: Connection, held: Held, code: str, message: str, *, engine: str | None) -> Status | None:
    return _end(conn, held, Status.FAILED, engine, error_code=code, error_message=message[:2000])


def canceled(conn: Connection, held: Held, *, engine: str | None = None) -> Status | None:
    return _end(conn, held, Status.CANCELED, engine)


def retry(conn: Connection, held: Held, *, attempt: int, max_attempts: int, code: str, message: str,
          delay_ms: int = 0, engine: str | None = None) -> Status | None:
    """Give the task back for another attempt, or fail it when `attempt` was the last."""
    if attempt >= max_attempts:
        return fail(conn, held, code, f"{message} (gave up after {attempt} attempts)", engine=engine)
    return _requeue(conn, _held(held), run_after=now_ms() + delay_ms)


def release(conn: Connection, held: Held) -> Status | None:
    """Hand an unfinished task back on shutdown, without spending an attempt."""
    return _requeue(conn, _held(held), run_after=now_ms(), attempt=Task.attempt - 1)


def release_all(conn: Connection, token: str) -> int:
    """Hand every task held under `token` back without spending an attempt (a cancel accepted
    meanwhile stays asked for, and whoever claims the task next honours it)."""
    values = dict(_UNLEASED, status=Status.PENDING.value, progress=0, run_after=now_ms(), attempt=Task.attempt - 1)
    released = conn.execute(update(Task).where(holding(token)).values(**values).returning(Task.id)).scalars().all()
    effects.requeued(conn, released)
    return len(released)


# -- housekeeping --------------------------------------------------------------------------------


def reap(conn: Connection, *, max_attempts: int) -> tuple[int, int]:
    """Requeue tasks whose lease lapsed, or fail them when attempts are spent; (requeued, failed).

    A task whose submit to the provider may have left (the relay's intent) is always requeued:
    failing it could abandon a task the provider runs and charges for, and whoever claims it
    next reconciles rather than submits. A local task whose cancel was accepted ends CANCELED
    as promised; a relayed one goes back, so the cancel is passed on to the provider.
    """
    now = now_ms()
    lapsed = and_(Task.status == Status.RUNNING.value, Task.lease_expires_at < now)
    local = Task.upstream_submit_at.is_(None)
    spent = and_(Task.attempt >= max_attempts, local)
    canceled = conn.execute(
        update(Task).where(lapsed, local, Task.cancel_requested)
        .values(**_UNLEASED, status=Status.CANCELED.value, ended_at=now).returning(Task.id)
    ).scalars().all()
    effects.after(conn, canceled, Status.CANCELED)
    failed_ids = conn.execute(
        update(Task).where(lapsed, spent).values(
            **_UNLEASED, status=Status.FAILED.value, ended_at=now, error_code="InternalError",
            error_message=f"the worker running this task stopped answering {max_attempts} times",
        ).returning(Task.id)
    ).scalars().all()
    effects.after(conn, failed_ids, Status.FAILED)
    failed = len(failed_ids)
    requeued = conn.execute(
        update(Task).where(lapsed, ~spent).values(**_UNLEASED, status=Status.PENDING.value, progress=0, run_after=now)
        .returning(Task.id)
    ).scalars().all()
    effects.requeued(conn, requeued)
    return len(requeued), failed


def expire(conn: Connection, task_ids: Sequence[str]) -> None:
    """Remove tasks past retention (their files are gone first); what they still hold is released."""
    removed = conn.execute(delete(Task).where(Task.id.in_(list(task_ids))).returning(Task.id)).scalars().all()
    effects.expired(conn, removed)


# -- plumbing ------------------------------------------------------------------------------------


def holding(token: str) -> ColumnElement[bool]:
    """The rows held under `token`."""
    return and_(Task.lease_token == token, Task.status == Status.RUNNING.value)


def _held(held: Held) -> ColumnElement[bool]:
    return and_(Task.id == held.task_id, holding(held.token))


def _end(conn: Connection, held: Held, status: Status, engine: str | None, **values: Any) -> Status | None:
    """End a held task in `status`, or CANCELED when its cancel was accepted meanwhile: two
    compare-and-sets in the caller's transaction."""
    ended = dict(_UNLEASED, ended_at=now_ms(), **({"engine": engine} if engine else {}))
    if status is not Status.CANCELED:
        done = conn.execute(
            update(Task).where(_held(held), ~Task.cancel_requested).values(**ended, status=status.value, **values)
        ).rowcount
        if done:
            effects.after(conn, [held.task_id], status, usage=values.get("usage"), engine=engine)
            return status
    promised = [] if status is Status.CANCELED else [Task.cancel_requested]
    canceled = conn.execute(update(Task).where(_held(held), *promised).values(**ended, status=Status.CANCELED.value))
    if not canceled.rowcount:
        return None
    effects.after(conn, [held.task_id], Status.CANCELED, engine=engine)
    return Status.CANCELED


def _requeue(conn: Connection, where: ColumnElement[bool], **values: Any) -> Status | None:
    """Back to the queue, or CANCELED when a cancel was accepted meanwhile."""
    moved = dict(_UNLEASED, status=Status.PENDING.value, progress=0, **values)
    if conn.execute(update(Task).where(where, ~Task.cancel_requested).values(**moved)).rowcount:
        return Status.PENDING
    canceled = conn.execute(
        update(Task).where(where, Task.cancel_requested)
        .values(**_UNLEASED, status=Status.CANCELED.value, ended_at=now_ms()).returning(Task.id)
    ).scalars().all()
    effects.after(conn, canceled, Status.CANCELED)
    return Status.CANCELED if canceled else None
