"""Database engines: SQLite in WAL mode by default, PostgreSQL by URL; migrations on start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError

__all__ = ["make_engine", "migrate", "now_ms", "is_postgres", "unavailable", "describe", "schema_missing"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x72327600  # advisory lock id held while PostgreSQL migrates


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
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args={**_PG_CONNECT_ARGS, **kwargs.pop("connect_args", {})}, **kwargs)


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

    return engine


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
