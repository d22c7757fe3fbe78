"""Reading tasks: one, a page of them, and what the retention sweep looks for.

Statements on the caller's connection; no function here opens a transaction. Every write to a
task's state is `ref2video.app.transitions`.

A poll is the hottest statement there is, so it is built once (`LOOKUP`, the task and its queue
position in one statement) and compiled once per dialect (`Lookup`), to run on a SQLAlchemy
`Connection` (`get_task`), on a plain DB-API connection (`lookup_task`, SQLite on the event
loop) or on a psycopg `AsyncConnection` (`lookup_task_async`, PostgreSQL on the event loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Integer, String, bindparam, case, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from ..protocol import Status
from .db import now_ms
from .models import Task

MAX_QUEUE_POSITION = 1000  # queue_position reports at most this

__all__ = [
    "TaskRecord",
    "TaskPage",
    "RECORD_COLUMNS",
    "LOOKUP",
    "Lookup",
    "get_task",
    "lookup_task",
    "lookup_task_async",
    "LOOKUP_MANY",
    "lookup_tasks_async",
    "list_tasks",
    "cancel_requested",
    "expired_tasks",
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


# The owner's task and, while it is PENDING, how many PENDING tasks were submitted before it:
# counted on the (status, submitted_at, id) index and capped, so a long queue does not make every
# poll slower. One statement, so a poll is one round trip.
_t = Task.__table__.alias("t")
_p = Task.__table__.alias("p")
_ahead = (
    select(_p.c.id)
    .where(_p.c.status == Status.PENDING.value, _p.c.submitted_at < _t.c.submitted_at)
    .limit(bindparam("cap", type_=Integer))
    .correlate(_t)
    .subquery("ahead")
)
LOOKUP = select(
    *[_t.c[c.name] for c in RECORD_COLUMNS],
    case((_t.c.status == Status.PENDING.value, select(func.count()).select_from(_ahead).scalar_subquery()),
         else_=None).label("queue_position"),
).where(_t.c.id == bindparam("task_id"), _t.c.owner == bindparam("owner"), _t.c.submitted_at > bindparam("since"))
_NAMES = [c.name for c in RECORD_COLUMNS] + ["queue_position"]

# PostgreSQL: many polls in one statement, (task id, owner) pairs given as two arrays; each row
# says which pair it answers (`n`, from 1). The same columns and position as LOOKUP.
_asked = (
    func.unnest(bindparam("task_ids", type_=ARRAY(String)), bindparam("owners", type_=ARRAY(String)))
    .table_valued("task_id", "owner", with_ordinality="n")
    .render_derived(name="asked")
)
LOOKUP_MANY = (
    select(_asked.c.n, *LOOKUP.selected_columns)
    .select_from(_asked.join(_t, (_t.c.id == _asked.c.task_id) & (_t.c.owner == _asked.c.owner)))
    .where(_t.c.submitted_at > bindparam("since"))
)


def get_task(conn: Connection, owner: str, task_id: str, retention_ms: int) -> TaskRecord | None:
    """The owner's task, with its queue position while PENDING; None when it is unknown to
    that owner or past retention."""
    params = {"task_id": task_id, "owner": owner, "since": now_ms() - retention_ms, "cap": MAX_QUEUE_POSITION}
    row = conn.execute(LOOKUP, params).first()
    return None if row is None else TaskRecord.from_row(row, queue_position=row.queue_position)


class Lookup:
    """`LOOKUP` compiled for one dialect, for drivers used without SQLAlchemy: the SQL, its
    parameters, and the column types' result processing (JSON text, SQLite's 0/1 booleans).
    On PostgreSQL also `LOOKUP_MANY` (`many_sql`, `many_params`, `records`)."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = LOOKUP.compile(dialect=dialect)
        self.sql = str(compiled)
        self._fixed = dict(compiled.params)
        self._order = list(compiled.positiontup) if compiled.positiontup else None
        self.many_sql: str | None = None
        if dialect.name == "postgresql":
            many = LOOKUP_MANY.compile(dialect=dialect)
            self.many_sql = str(many)
            self._many_fixed = dict(many.params)
        types = [c.type for c in RECORD_COLUMNS] + [None]
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, type_ in enumerate(types):
            processor = type_.dialect_impl(dialect).result_processor(dialect, None) if type_ is not None else None
            if processor is not None:
                self._processors.append((i, processor))

    def params(self, owner: str, task_id: str, retention_ms: int) -> Any:
        """The parameters in the driver's style: a tuple (qmark) or a dict (pyformat)."""
        values = {**self._fixed, "task_id": task_id, "owner": owner, "since": now_ms() - retention_ms,
                  "cap": MAX_QUEUE_POSITION}
        return values if self._order is None else tuple(values[name] for name in self._order)

    def many_params(self, asked: Sequence[tuple[str, str]], retention_ms: int) -> dict[str, Any]:
        """`LOOKUP_MANY`'s parameters for (owner, task id) pairs (pyformat)."""
        return {**self._many_fixed, "owners": [owner for owner, _ in asked], "task_ids": [i for _, i in asked],
                "since": now_ms() - retention_ms, "cap": MAX_QUEUE_POSITION}

    def records(self, rows: Sequence[Sequence[Any]], asked: int) -> list[TaskRecord | None]:
        """`LOOKUP_MANY`'s rows as one answer per pair asked, in order (None: not found)."""
        found: list[TaskRecord | None] = [None] * asked
        for row in rows:
            found[row[0] - 1] = self.record(row[1:])
        return found

    def record(self, row: Sequence[Any] | None) -> TaskRecord | None:
        if row is None:
            return None
        values = list(row)
        for i, processor in self._processors:
            values[i] = processor(values[i])
        fields = dict(zip(_NAMES, values))
        fields["status"] = Status(fields["status"])
        return TaskRecord(**fields)


def lookup_task(dbapi_conn: Any, lookup: Lookup, owner: str, task_id: str, retention_ms: int) -> TaskRecord | None:
    """`get_task` on a plain DB-API connection (one with `execute`, as sqlite3's)."""
    return lookup.record(dbapi_conn.execute(lookup.sql, lookup.params(owner, task_id, retention_ms)).fetchone())


async def lookup_task_async(aconn: Any, lookup: Lookup, owner: str, task_id: str,
                            retention_ms: int) -> TaskRecord | None:
    """`get_task` on a psycopg `AsyncConnection` (prepared on the server after a few uses)."""
    cursor = await aconn.execute(lookup.sql, lookup.params(owner, task_id, retention_ms))
    return lookup.record(await cursor.fetchone())


async def lookup_tasks_async(aconn: Any, lookup: Lookup, asked: Sequence[tuple[str, str]],
                             retention_ms: int) -> list[TaskRecord | None]:
    """`get_task` for each (owner, task id) pair, in one statement, on a psycopg
    `AsyncConnection` (PostgreSQL)."""
    assert lookup.many_sql is not None
    cursor = await aconn.execute(lookup.many_sql, lookup.many_params(asked, retention_ms))
    return lookup.records(await cursor.fetchall(), len(asked))


def list_tasks(
    conn: Connection,
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
    total = conn.execute(select(func.count()).select_from(Task).where(*where)).scalar_one()
    rows = conn.execute(
        select(*RECORD_COLUMNS)
        .where(*where)
        .order_by(Task.submitted_at.desc(), Task.id.desc())
        .limit(page_size)
        .offset((page_no - 1) * page_size)
    ).all()
    return TaskPage(items=[TaskRecord.from_row(r) for r in rows], total=total)


def cancel_requested(conn: Connection, task_id: str, token: str) -> bool | None:
    """Whether the owner asked the task held under `token` to stop; None when it is not held."""
    row = conn.execute(
        select(Task.cancel_requested).where(
            Task.id == task_id, Task.lease_token == token, Task.status == Status.RUNNING.value
        )
    ).first()
    return None if row is None else bool(row.cancel_requested)


def next_run_after(conn: Connection, models: Collection[str], now: int) -> int | None:
    """When the soonest PENDING task of `models` that is not yet claimable (a retry's backoff)
    becomes claimable, in epoch ms; None when there is none (`ix_tasks_claim` answers it)."""
    return conn.execute(
        select(func.min(Task.run_after)).where(
            Task.status == Status.PENDING.value, Task.run_after > now, Task.model.in_(list(models))
        )
    ).scalar_one_or_none()


def expired_tasks(conn: Connection, retention_ms: int, limit: int = 500) -> list[tuple[str, str | None]]:
    """(id, result_key) of up to `limit` tasks submitted before the retention window."""
    cutoff = now_ms() - retention_ms
    rows = conn.execute(select(Task.id, Task.result_key).where(Task.submitted_at <= cutoff).limit(limit)).all()
    return [(r.id, r.result_key) for r in rows]


def owned_result_keys(conn: Connection, keys: Collection[str]) -> set[str]:
    """Those of `keys` that some task names as its result: one query, so pass a batch."""
    if not keys:
        return set()
    found = conn.execute(select(Task.result_key).where(Task.result_key.in_(list(keys)))).scalars()
    return {key for key in found if key is not None}
