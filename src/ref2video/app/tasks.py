"""Tasks as their owners see them: create, read, list and cancel, each in one transaction.

The request path's two hottest calls are awaited on the event loop, without a thread hop:

- `get` reads on the loop: on SQLite with the thread's own connection (`store.db.loop_connection`),
  on PostgreSQL with the loop's pool, the polls of one turn of the loop pipelined together
  (`app.reads`). On any database error it reads again the ordinary way, in a thread, so errors
  are reported as they always were.
- `submit` hands a create to the engine's batches (`app.batches`): one transaction for the
  creates that arrive together.

`create`, `page` and `cancel` block, for a thread.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence

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
from . import transitions
from .batches import creates_for
from .reads import polls_for

__all__ = ["TaskRecord", "TaskPage", "create", "submit", "get", "get_blocking", "page", "cancel", "release"]


def create(db: Engine, spec: TaskSpec, principal: Principal, *, retention_ms: int,
           write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext(),
           on_insert: Callable[[Connection], None] | None = None) -> TaskRecord:
    """A new PENDING task of `principal`'s, once every `oss://` file it names is theirs.
    `on_insert` runs in the same transaction (the queue's wake-up on PostgreSQL)."""
    _check_uploads(db, spec, principal, retention_ms)
    with write_lock, db.begin() as conn:
        task = transitions.create(conn, spec, principal)
        if on_insert is not None:
            on_insert(conn)
    return task


async def submit(db: Engine, spec: TaskSpec, principal: Principal, *, retention_ms: int,
                 write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext(),
                 on_insert: Callable[[Connection], None] | None = None) -> TaskRecord:
    """`create`, awaited on the event loop: the insert joins the engine's next batch (one
    transaction for the creates that arrive together; `app.batches`)."""
    if any(oss_key(url) for _, url in spec.all_urls):
        # Rare (the SDK's uploads): checked first, in a thread, as `create` does.
        await to_thread.run_sync(lambda: _check_uploads(db, spec, principal, retention_ms))
    return await creates_for(db, write_lock=write_lock, on_insert=on_insert).add(spec, principal)


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
           write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()) -> Status | None:
    """Cancel the principal's task (see `transitions.cancel`)."""
    with write_lock, db.begin() as conn:
        return transitions.cancel(conn, principal.owner, task_id)


async def release(db: Engine) -> None:
    """Let go of what `get` holds on the running event loop (its PostgreSQL pool); an app's
    shutdown. The engine's disposal lets go of the rest."""
    await close_loop_pool(db)
