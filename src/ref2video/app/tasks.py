"""Tasks as their owners see them: create, read, list and cancel, each in one transaction.

The request path's two hottest calls are awaited on the event loop, without a thread hop:

- `get` reads on the loop: on SQLite with the thread's own connection (`store.db.loop_connection`),
  on PostgreSQL with the loop's pool, the polls of one turn of the loop read together
  (`app.reads`). On any database error it reads again the ordinary way, in a thread, so errors
  are reported as they always were.
- `submit` hands a create to the engine's batches (`app.batches`): one transaction for the
  creates that arrive together, with what each needs beside its insert (the hold of its largest
  cost when billing is on, the unfinished-task quota). A create with an idempotency key or its
  own callback runs `create` in a thread, one transaction of its own.

`create`, `page` and `cancel` block, for a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

from anyio import to_thread
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ..errors import InvalidURL
from ..protocol import Status
from ..spec import TaskSpec, oss_key
from ..store import tasks as store
from ..store import uploads
from ..store.db import close_loop_pool, is_postgres, loop_connection
from ..store.keys import Principal
from ..store.tasks import Lookup, TaskPage, TaskRecord
from . import ledger, limits, observe, transitions
from .batches import Then, creates_for
from .idempotency import Claim, Replay, replay
from .idempotency import bind as bind_key
from .ledger import Prices
from .reads import polls_for

__all__ = ["TaskRecord", "TaskPage", "Billing", "create", "submit", "get", "get_blocking", "page", "cancel",
           "release"]


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
    _check_uploads(db, spec, principal, retention_ms)
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


async def submit(db: Engine, spec: TaskSpec, principal: Principal, *, retention_ms: int,
                 write_lock: contextlib.AbstractContextManager[object] = _NO_LOCK,
                 on_insert: Callable[[Connection], None] | None = None, billing: Billing | None = None,
                 callback_url: str | None = None, idempotency: Claim | None = None,
                 max_unfinished: int = 0) -> TaskRecord:
    """`create`, awaited on the event loop. A create joins the engine's next batch (one
    transaction for the creates that arrive together; `app.batches`), its hold and quota check
    in that transaction; one with an idempotency key or a callback runs `create` in a thread."""
    if callback_url is not None or idempotency is not None:
        return await to_thread.run_sync(functools.partial(
            create, db, spec, principal, retention_ms=retention_ms, write_lock=write_lock, on_insert=on_insert,
            billing=billing, callback_url=callback_url, idempotency=idempotency, max_unfinished=max_unfinished))
    if any(oss_key(url) for _, url in spec.all_urls):
        # Rare (the SDK's uploads): checked first, in a thread, as `create` does.
        await to_thread.run_sync(lambda: _check_uploads(db, spec, principal, retention_ms))
    then = _holding(spec, billing, max_unfinished) if billing is not None or max_unfinished else None
    return await creates_for(db, write_lock=write_lock, on_insert=on_insert).add(spec, principal, then)


def _holding(spec: TaskSpec, billing: Billing | None, max_unfinished: int) -> Then:
    """What a create does in its transaction after its insert, in `create`'s order."""
    def then(conn: Connection, task: TaskRecord) -> None:
        limits.check_unfinished(conn, task.owner, max_unfinished)
        if billing is not None:
            ledger.hold(conn, task, spec, billing.prices, billing.tz)
    return then


async def get(db: Engine, principal: Principal, task_id: str, *, retention_ms: int) -> TaskRecord | None:
    """The principal's task, or None when it is unknown to them or past retention; read on the
    event loop."""
    lookup = _lookup(db)
    if not is_postgres(db):
        try:
            dbapi = loop_connection(db).connection.dbapi_connection
            return store.lookup_task(dbapi, lookup, principal.owner, task_id, retention_ms)
        except (sqlite3.Error, DBAPIError):
            pass  # a lock met (or worse): the ordinary way reports it as it always has
    else:
        try:
            return await polls_for(db).get(lookup, principal.owner, task_id, retention_ms)
        except _pg_errors():
            pass  # the database away, or this connection lost: the ordinary way reports it
    return await to_thread.run_sync(lambda: get_blocking(db, principal, task_id, retention_ms=retention_ms))


@functools.cache
def _pg_errors() -> tuple[type[BaseException], ...]:
    import psycopg  # only where there is PostgreSQL (an optional dependency)
    from psycopg_pool import PoolTimeout

    return (psycopg.Error, PoolTimeout)


def get_blocking(db: Engine, principal: Principal, task_id: str, *, retention_ms: int) -> TaskRecord | None:
    """`get` for a thread, through the engine's pool."""
    with db.connect() as conn:
        return store.get_task(conn, principal.owner, task_id, retention_ms)


# The poll's statement compiled for each kind of engine (dialect and parameter style).
_lookups: dict[tuple[type, str], Lookup] = {}


def _lookup(db: Engine) -> Lookup:
    kind = (type(db.dialect), db.dialect.paramstyle)
    found = _lookups.get(kind)
    if found is None:
        found = _lookups[kind] = Lookup(db.dialect)
    return found


def _check_uploads(db: Engine, spec: TaskSpec, principal: Principal, retention_ms: int) -> None:
    """Every `oss://` file the spec names is one of the principal's uploads, or InvalidURL."""
    names = {oss_key(url): what for what, url in reversed(spec.all_urls) if oss_key(url)}
    if names:
        with db.connect() as conn:
            unknown = uploads.unknown_keys(conn, principal.owner, names, retention_ms)
        for key in unknown:
            raise InvalidURL(f"{names[key]}: unknown oss:// key {key[:200]!r}; upload the file first")


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


async def release(db: Engine) -> None:
    """Let go of what `get` holds on the running event loop (its PostgreSQL pool); an app's
    shutdown. The engine's disposal lets go of the rest."""
    await close_loop_pool(db)
