"""Database engines: SQLite in WAL mode by default, PostgreSQL by URL; migrations on start.

Besides its SQLAlchemy pool, an engine lends the request path connections for work done on the
event loop itself, so that a poll (and, on SQLite, a batch of creates) needs no thread hop:

- SQLite: `loop_connection(engine)`, one `Connection` per thread, that never waits for a lock
  (busy timeout 0) and never checkpoints the WAL by itself. In WAL mode a read never waits for
  a writer, so it is short enough for the loop; a write that meets another writer's lock fails
  at once, and is then done the ordinary way, in a thread. `checkpoint(engine)` (in a thread)
  moves what such connections wrote into the database file.
- PostgreSQL: `loop_pool(engine)`, a psycopg `AsyncConnectionPool` of the running event loop
  (autocommit connections; statements prepared on the server after a few uses).

Both are closed with the engine (`Engine.dispose`), a loop's pool also by `close_loop_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError

__all__ = [
    "make_engine", "migrate", "now_ms", "is_postgres", "unavailable", "describe", "schema_missing",
    "loop_connection", "drop_loop_connection", "checkpoint", "loop_pool", "close_loop_pool",
]

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x72327600  # advisory lock id held while PostgreSQL migrates
_POOL_MIN, _POOL_MAX = 2, 10  # connections of each event loop's PostgreSQL pool
_POOL_WAIT = 2.0  # seconds a read waits for a pooled connection before going the ordinary way


def now_ms() -> int:
    return int(time.time() * 1000)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; `postgresql://` means psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                           connect_args={**_PG_CONNECT_ARGS, **kwargs.pop("connect_args", {})}, **kwargs)
    event.listen(engine, "engine_disposed", _close_loop_connections)
    return engine


# A host cut off from the database must neither hang on a dead socket nor, mid-transaction,
# hold row locks that stop every other host: keepalives and an unacknowledged-data bound end
# its side within about half a minute, and the server ends a transaction left idle for a minute
# (every transaction here is a few statements long).
_PG_CONNECT_ARGS: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000, "options": "-c idle_in_transaction_session_timeout=60000",
}


def _sqlite_engine(url: Any, **kwargs: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=10,
        max_overflow=20, **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling is off; SQLAlchemy's begin event issues BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Deferred: every write transaction here starts with its write statement, so it waits
        # on busy_timeout for the lock instead of failing to upgrade a read snapshot.
        conn.exec_driver_sql("BEGIN")

    event.listen(engine, "engine_disposed", _close_loop_connections)
    return engine


# -- connections for reads on the event loop ---------------------------------------------------


class _LoopConnections:
    """What one engine lends the request path: SQLite connections by thread, PostgreSQL pools
    by event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sqlite: dict[int, Connection] = {}  # thread id -> its connection
        self.pools: dict[asyncio.AbstractEventLoop, Any] = {}


_lent: weakref.WeakKeyDictionary[Engine, _LoopConnections] = weakref.WeakKeyDictionary()
_lent_lock = threading.Lock()


def _lent_by(engine: Engine) -> _LoopConnections:
    lent = _lent.get(engine)
    if lent is None:
        with _lent_lock:
            lent = _lent.setdefault(engine, _LoopConnections())
    return lent


def loop_connection(engine: Engine) -> Connection:
    """This thread's own connection to `engine`'s SQLite database, for work on the event loop:
    outside a transaction each statement is its own (autocommit), a lock held by another
    writer fails a statement at once (`OperationalError`, "database is locked"), and the WAL is
    left for `checkpoint` to move into the database file. Made by the engine (its pragmas),
    then taken out of its pool."""
    lent = _lent_by(engine)
    ident = threading.get_ident()
    conn = lent.sqlite.get(ident)
    if conn is None:
        conn = engine.connect()
        conn.connection.detach()  # ours now, with its own pragmas: closed with the engine
        dbapi: Any = conn.connection.dbapi_connection
        dbapi.execute("PRAGMA busy_timeout=0")
        dbapi.execute("PRAGMA wal_autocheckpoint=0")
        with lent.lock:
            lent.sqlite[ident] = conn
    return conn


def drop_loop_connection(engine: Engine) -> None:
    """Close this thread's `loop_connection` (it failed in a way that left it unusable: the next
    is made afresh, with its pragmas, rather than reconnected by SQLAlchemy without them)."""
    lent = _lent.get(engine)
    if lent is not None:
        with lent.lock:
            conn = lent.sqlite.pop(threading.get_ident(), None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def checkpoint(engine: Engine) -> None:
    """Copy the WAL's pages into the SQLite database file, as far as no reader needs them
    (`PRAGMA wal_checkpoint(PASSIVE)`); it writes and syncs the file, so call it in a thread."""
    raw = engine.raw_connection()
    try:
        sqlite: Any = raw.driver_connection
        sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        raw.close()


async def loop_pool(engine: Engine) -> Any:
    """The running event loop's psycopg `AsyncConnectionPool` of `engine`'s PostgreSQL
    database (made on first use): take a connection with `getconn()` and give it back with
    `putconn()` (cheaper than its `connection()` context, whose commit-or-rollback an
    autocommit connection does not need). `getconn` raises `psycopg_pool.PoolTimeout` when none
    is free within a couple of seconds (the database away, say)."""
    loop = asyncio.get_running_loop()
    lent = _lent_by(engine)
    pool = lent.pools.get(loop)
    if pool is None:
        from psycopg_pool import AsyncConnectionPool

        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        made = AsyncConnectionPool(conninfo, min_size=_POOL_MIN, max_size=_POOL_MAX, open=False,
                                   timeout=_POOL_WAIT, kwargs={"autocommit": True}, name="ref2video-loop")
        await made.open()
        with lent.lock:
            pool = lent.pools.setdefault(loop, made)
        if pool is not made:  # another request of this loop made one meanwhile
            await made.close()
    return pool


async def close_loop_pool(engine: Engine) -> None:
    """Close the running event loop's pool of `engine`, if it has one (an app's shutdown)."""
    lent = _lent.get(engine)
    if lent is not None:
        with lent.lock:
            pool = lent.pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()


def _close_loop_connections(engine: Engine) -> None:
    """On `Engine.dispose()`: close what was lent. A pool is closed on its own loop, which is
    waited for when it runs in another thread."""
    lent = _lent.pop(engine, None)
    if lent is None:
        return
    with lent.lock:
        conns, lent.sqlite = list(lent.sqlite.values()), {}
        pools, lent.pools = list(lent.pools.items()), {}
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()
    for loop, pool in pools:
        if loop.is_closed() or not loop.is_running():
            continue  # nothing can await on it any more; the connections go with the pool
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(pool.close())
            continue
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(pool.close(timeout=5), loop).result(10)


def describe(url: str) -> str:
    """The database `url` names, for people: a SQLite file's absolute path, else the URL with
    its password masked."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return "SQLite in memory"
        return str(Path(parsed.database).resolve())
    return parsed.render_as_string(hide_password=True)


def schema_missing(url: str) -> str | None:
    """Why `url` holds no ref2video database yet ("no such file", "no ref2video tables"), or
    None when it does. Creates nothing; a database that cannot be reached raises DBAPIError."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return "no ref2video tables"  # a new memory database is always empty
        if not Path(parsed.database).is_file():
            return "no such file"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return None if inspect(conn).has_table("tasks") else "no ref2video tables"
    finally:
        engine.dispose()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call from several processes at once."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# SQLite's ways of saying "not now": a lock held too long, a full or failing disk, a file that
# cannot be opened or written. Its OperationalError also means plain bugs ("no such table").
_SQLITE_AWAY = ("locked", "busy", "disk i/o error", "disk is full", "unable to open", "readonly")


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away for now (worth a retry), not that a statement
    is wrong: connections refused, lost or timed out, a pool with no connection free, and
    SQLite's locked or full database."""
    if isinstance(exc, SATimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        return isinstance(exc, OperationalError) and any(p in str(exc.orig).lower() for p in _SQLITE_AWAY)
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated
