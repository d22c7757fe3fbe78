"""Tasks as their owners see them: create, read, list and cancel, each in one transaction."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from ..errors import InvalidURL
from ..protocol import Status
from ..spec import TaskSpec, oss_key
from ..store import tasks as store
from ..store import uploads
from ..store.keys import Principal
from ..store.tasks import TaskPage, TaskRecord
from . import ledger, limits, observe, transitions
from .idempotency import Claim, Replay, replay
from .idempotency import bind as bind_key
from .ledger import Prices

__all__ = ["TaskRecord", "TaskPage", "Billing", "create", "get", "page", "cancel"]


_NO_LOCK = contextlib.nullcontext()  # reusable: it holds nothing


@dataclasses.dataclass(frozen=True)
class Billing:
    """What a create needs when billing is on: the prices, and the zone spend limits' days are in."""

    prices: Prices
    tz: ZoneInfo


def create(db: Engine, spec: TaskSpec, principal: Principal, *, retention_ms: int,
           write_lock: contextlib.AbstractContextManager[object] = _NO_LOCK,
           on_insert: Callable[[Connection], None] | None = None, billing: Billing | None = None,
           callback_url: str | None = None, idempotency: Claim | None = None,
           max_unfinished: int = 0) -> TaskRecord:
    """A new PENDING task of `principal`'s, once every `oss://` file it names is theirs, and,
    with `billing`, once its largest cost is held against the owner's balance (else `Arrearage`,
    and no task). `on_insert` runs in the same transaction (the queue's wake-up on PostgreSQL);
    `callback_url` gets the task's webhooks (docs/webhooks.md). With `idempotency`, a key that
    made a task before answers that task (`Claim.replayed`); with `max_unfinished`, an owner with
    that many tasks PENDING or RUNNING is refused (`Throttled`, and no task)."""
    names = {oss_key(url): what for what, url in reversed(spec.all_urls) if oss_key(url)}
    if names:
        with db.connect() as conn:
            unknown = uploads.unknown_keys(conn, principal.owner, names, retention_ms)
        for key in unknown:
            raise InvalidURL(f"{names[key]}: unknown oss:// key {key[:200]!r}; upload the file first")
    try:
        with write_lock, observe.begin(db) as conn:
            task = transitions.create(conn, spec, principal, callback_url=callback_url)
            if idempotency is not None:
                bind_key(conn, principal.owner, idempotency, task, retention_ms=retention_ms)
            limits.check_unfinished(conn, principal.owner, max_unfinished)
            if billing is not None:
                ledger.hold(conn, task, spec, billing.prices, billing.tz)
            if on_insert is not None:
                on_insert(conn)
            observe.moved(conn, [task.id], Status.PENDING, source=None)
    except Replay as earlier:  # this create rolled back; the key's first task answers
        return replay(db, principal, earlier, retention_ms=retention_ms)
    return task


def get(db: Engine, principal: Principal, task_id: str, *, retention_ms: int) -> TaskRecord | None:
    """The principal's task, or None when it is unknown to them or past retention."""
    with db.connect() as conn:
        return store.get_task(conn, principal.owner, task_id, retention_ms)


def page(db: Engine, principal: Principal, *, retention_ms: int, page_no: int = 1, page_size: int = 10,
         start_ms: int | None = None, end_ms: int | None = None, model: str | None = None,
         status: Sequence[str] | None = None, id_prefix: str | None = None) -> TaskPage:
    """A page of the principal's tasks, newest first."""
    with db.connect() as conn:
        return store.list_tasks(conn, principal.owner, retention_ms=retention_ms, page_no=page_no,
                                page_size=page_size, start_ms=start_ms, end_ms=end_ms, model=model,
                                status=status, id_prefix=id_prefix)


def cancel(db: Engine, principal: Principal, task_id: str, *,
           write_lock: contextlib.AbstractContextManager[object] = _NO_LOCK) -> Status | None:
    """Cancel the principal's task (see `transitions.cancel`)."""
    with write_lock, observe.begin(db) as conn:
        return transitions.cancel(conn, principal.owner, task_id)
