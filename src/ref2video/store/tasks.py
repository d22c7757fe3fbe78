"""Tasks as the API sees them: create, read, list, cancel, and the retention sweep.

The worker's side of the same table (claim, heartbeat, finish) is `ref2video.queue.manager`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from ..protocol import Status
from ..spec import TaskSpec
from .db import now_ms
from .keys import Principal, check_secret, parse_key
from .models import ApiKey, Task

MAX_QUEUE_POSITION = 1000  # queue_position reports at most this

__all__ = [
    "TaskRecord",
    "TaskPage",
    "RECORD_COLUMNS",
    "create_task",
    "get_task_as",
    "list_tasks",
    "cancel_task",
    "expired_tasks",
    "delete_tasks",
    "owned_result_keys",
]


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """A task row as the API and the worker read it."""

    id: str
    owner: str
    model: str
    status: Status
    spec: dict[str, Any]
    progress: int
    attempt: int
    cancel_requested: bool
    submitted_at: int
    scheduled_at: int | None
    ended_at: int | None
    engine: str | None
    result_key: str | None
    usage: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    queue_position: int | None = None
    upstream_status: str | None = None  # the provider's state, for relayed tasks

    @classmethod
    def from_row(cls, row: Any, **extra: Any) -> TaskRecord:
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name in _COLUMNS}
        values["status"] = Status(values["status"])
        return cls(**values, **extra)


_COLUMNS = frozenset(c.name for c in Task.__table__.columns)
RECORD_COLUMNS = [Task.__table__.c[f.name] for f in dataclasses.fields(TaskRecord) if f.name in _COLUMNS]


@dataclasses.dataclass(frozen=True)
class TaskPage:
    items: list[TaskRecord]
    total: int


def create_task(
    engine: Engine, spec: TaskSpec, principal: Principal, *, on_insert: Callable[[Connection], None] | None = None
) -> TaskRecord:
    """Insert a PENDING task and return it; `on_insert` runs in the same transaction."""
    now = now_ms()
    values = dict(
        id=str(uuid.uuid4()), owner=principal.owner, key_id=principal.key_id, model=spec.model,
        status=Status.PENDING.value, spec=spec.to_json(), progress=0, attempt=0,
        cancel_requested=False, run_after=now, submitted_at=now,
    )
    with engine.begin() as conn:
        conn.execute(insert(Task).values(**values))
        if on_insert is not None:
            on_insert(conn)
    row = dict(values, scheduled_at=None, ended_at=None, engine=None, result_key=None,
               usage=None, error_code=None, error_message=None, upstream_status=None)
    return TaskRecord.from_row(_Row(row))


def get_task_as(engine: Engine, key: str, task_id: str, retention_ms: int) -> tuple[Principal | None, TaskRecord | None]:
    """Authenticate `key` and read its owner's task in one round trip.

    Returns (None, None) for a bad key; (principal, None) when the task is unknown to that owner
    or past retention.
    """
    parsed = parse_key(key)
    if parsed is None:
        return None, None
    key_id, secret = parsed
    visible = and_(
        Task.id == task_id, Task.owner == ApiKey.owner, Task.submitted_at > now_ms() - retention_ms
    )
    stmt = (
        select(ApiKey.owner.label("key_owner"), ApiKey.secret_hash, *RECORD_COLUMNS)
        .select_from(ApiKey)
        .outerjoin(Task, visible)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
        if not check_secret(secret, row.secret_hash if row else None):
            return None, None
        assert row is not None
        principal = Principal(key_id=key_id, owner=row.key_owner)
        if row.id is None:
            return principal, None
        position = None
        if row.status == Status.PENDING.value:
            # Counted on the (status, submitted_at) index, and capped, so a long queue does
            # not make every poll slower.
            ahead = (
                select(Task.id)
                .where(Task.status == Status.PENDING.value, Task.submitted_at < row.submitted_at)
                .limit(MAX_QUEUE_POSITION)
                .subquery()
            )
            position = conn.execute(select(func.count()).select_from(ahead)).scalar_one()
    return principal, TaskRecord.from_row(row, queue_position=position)


def list_tasks(
    engine: Engine,
    owner: str,
    *,
    retention_ms: int,
    page_no: int = 1,
    page_size: int = 10,
    start_ms: int | None = None,
    end_ms: int | None = None,
    model: str | None = None,
    status: Sequence[str] | None = None,
    id_prefix: str | None = None,
) -> TaskPage:
    """The owner's tasks, newest first, filtered and paged; `id_prefix` keeps the ids that start with it."""
    where = [Task.owner == owner, Task.submitted_at > now_ms() - retention_ms]
    if start_ms is not None:
        where.append(Task.submitted_at >= start_ms)
    if end_ms is not None:
        where.append(Task.submitted_at <= end_ms)
    if model:
        where.append(Task.model == model)
    if status:
        where.append(Task.status.in_(list(status)))
    if id_prefix:
        # substr, not LIKE: SQLite's LIKE ignores case, and the prefix must match exactly everywhere.
        where.append(func.substr(Task.id, 1, len(id_prefix)) == id_prefix)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(Task).where(*where)).scalar_one()
        rows = conn.execute(
            select(*RECORD_COLUMNS)
            .where(*where)
            .order_by(Task.submitted_at.desc(), Task.id.desc())
            .limit(page_size)
            .offset((page_no - 1) * page_size)
        ).all()
    return TaskPage(items=[TaskRecord.from_row(r) for r in rows], total=total)


def cancel_task(engine: Engine, owner: str, task_id: str) -> Status | None:
    """Cancel a PENDING task, or ask a RUNNING one to stop.

    A task already sent to the provider is only asked to stop (the relay passes the cancel
    upstream), and only while the provider may still hold it PENDING: the provider cancels
    nothing that runs. Returns CANCELED or RUNNING for what was done, None when nothing could be.
    """
    mine = and_(Task.id == task_id, Task.owner == owner)
    local = Task.upstream_submit_at.is_(None)
    with engine.begin() as conn:
        done = conn.execute(
            update(Task)
            .where(mine, local, Task.status == Status.PENDING.value)
            .values(status=Status.CANCELED.value, ended_at=now_ms())
        )
        if done.rowcount == 1:
            return Status.CANCELED
        cancellable = or_(
            and_(local, Task.status == Status.RUNNING.value),
            and_(~local, Task.status.in_([Status.PENDING.value, Status.RUNNING.value]),
                 or_(Task.upstream_status.is_(None), Task.upstream_status == Status.PENDING.value)),
        )
        asked = conn.execute(update(Task).where(mine, cancellable).values(cancel_requested=True))
    return Status.RUNNING if asked.rowcount == 1 else None


def expired_tasks(engine: Engine, retention_ms: int, limit: int = 500) -> list[tuple[str, str | None]]:
    """(id, result_key) of up to `limit` tasks submitted before the retention window."""
    cutoff = now_ms() - retention_ms
    with engine.connect() as conn:
        rows = conn.execute(
            select(Task.id, Task.result_key).where(Task.submitted_at <= cutoff).limit(limit)
        ).all()
    return [(r.id, r.result_key) for r in rows]


def delete_tasks(engine: Engine, task_ids: Sequence[str]) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Task).where(Task.id.in_(list(task_ids))))


def owned_result_keys(engine: Engine, keys: Collection[str]) -> set[str]:
    """Those of `keys` that some task names as its result: one query, so pass a batch."""
    if not keys:
        return set()
    with engine.connect() as conn:
        return set(conn.execute(select(Task.result_key).where(Task.result_key.in_(list(keys)))).scalars())


class _Row:
    """Attribute access over a dict, so new rows go through `TaskRecord.from_row` too."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
