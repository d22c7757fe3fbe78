"""`ref2video serve | worker | keys` over `Service` and `create_app`; the task commands
(`generate`, `status`, `cancel`, `list`) are in `tasks.py`, over the Python SDK.

The server (service, app, store, sqlalchemy, the settings) is imported by the commands that
use it, not here: building the command line and running a client command (`status`, `list`,
...) loads only typer, rich and the client (tests/cli/test_startup.py).
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import threading
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from .output import err, fail, one_line, out, piped

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..app.keys import KeyRates
    from ..config import Settings

__all__ = ["app", "main"]

app = typer.Typer(help="ref2video: reference-to-video tasks on your own terms.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys, and set a key's own rate limits.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file")]
# Click's exception base, as the installed typer has it (newer ones carry their own copy of click).
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
InitOpt = Annotated[bool, typer.Option("--init", help="create the database if there is none (serve always does)")]
# A key's own rate limits (docs/limits.md); 'default' is the server's setting.
CreateRateOpt = Annotated[str | None, typer.Option(
    "--create-rate", help="creates a second for this key; 0: no limit; 'default': the server's")]
CreateBurstOpt = Annotated[str | None, typer.Option(
    "--create-burst", help="creates at once; 0: the rate rounded up; 'default': the server's")]
QueryRateOpt = Annotated[str | None, typer.Option(
    "--query-rate", help="queries a second for this key; 0: no limit; 'default': the server's")]
QueryBurstOpt = Annotated[str | None, typer.Option(
    "--query-burst", help="queries at once; 0: the rate rounded up; 'default': the server's")]


def _settings(config: Path | None, **overrides: object) -> Settings:
    from ..config import Settings

    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except Exception as exc:  # a bad file or value: one clear line, no traceback
        fail(f"invalid configuration: {exc}", 2)


def _logging(settings: Settings) -> None:
    from .. import logs

    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level.lower() != "debug":  # one line per migration step is for debugging
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _where(settings: Settings) -> str:
    from sqlalchemy.exc import ArgumentError

    from ..store.db import describe

    try:
        return describe(settings.database_url)
    except ArgumentError as exc:
        fail(f"invalid configuration: database_url: {exc}", 2)


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    workers: Annotated[int | None, typer.Option(
        help="0: API only; else run tasks too (the capacity of an engine that declares none)")] = None,
) -> None:
    """Run the HTTP API (and, by default, workers in the same process); creates the database if needed."""
    import uvicorn

    from .. import metrics
    from ..api.app import create_app
    from ..api.server import server_config

    settings = _settings(config, host=host, port=port, workers=workers)
    where = _where(settings)
    listener = _listen(settings.host, settings.port)  # before anything is migrated or started
    _reach(settings, where)
    _logging(settings)
    base = f"http://{f'[{settings.host}]' if ':' in settings.host else settings.host}:{settings.port}"
    out.print(f"ref2video on {base}/  (web page; API docs at {base}/docs)", markup=False)
    out.print(f"data in {settings.data_dir.resolve()}; database {where}", markup=False)
    server = uvicorn.Server(server_config(create_app(settings), settings))
    try:
        server.run(sockets=[listener])
    except SystemExit:  # uvicorn's own exit (3) when the app's start-up raised
        pass
    finally:
        metrics.process_stopped()
    if not server.started:  # the app's start-up failed (its error is logged above)
        fail("ref2video could not start: its error is logged above", 4)


def _reach(settings: Settings, where: str) -> None:
    """Exit 4 with one line when a database server does not answer, before uvicorn starts (it
    would exit 3 after a traceback). A SQLite file is made by the start-up itself."""
    if settings.database_url.startswith("sqlite"):
        return
    from sqlalchemy.exc import DBAPIError

    from ..store.db import schema_missing

    try:
        schema_missing(settings.database_url)
    except DBAPIError as exc:
        fail(f"cannot reach the database {where}: {' '.join(str(exc.orig).split())}", 4)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn, or exit 4 saying why it cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is in use; choose another with --port", 4)
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 4)
    sock.set_inheritable(True)
    return sock


@app.command()
def worker(config: ConfigOpt = None, workers: Annotated[int | None, typer.Option()] = None,
           models: Annotated[str | None, typer.Option(
               help="comma-separated models whose tasks this process runs (default: all)")] = None,
           init: InitOpt = False) -> None:
    """Run workers only, against the configured database (scale-out)."""
    from .. import metrics
    from ..service import Service

    settings = _settings(config, workers=workers, worker_models=models)
    _check_database(settings, init=init)
    _logging(settings)
    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start(api=False)
    if settings.worker_metrics_port:
        try:
            metrics.serve(settings.worker_metrics_port, settings.host, service.gauges)
        except OSError as exc:
            service.stop()
            fail(f"cannot serve metrics on {settings.host}:{settings.worker_metrics_port}: {exc.strerror or exc}", 4)
    parts = [f"{capacity} slot(s) for {', '.join(names)}" for names, capacity in service.slots]
    parts += [f"the {name} engine for {', '.join(sorted(models))} (up to {capacity} at once)"
              for name, models, capacity in service.held_slots]
    out.print(f"ref2video worker: {'; '.join(parts) or 'nothing to run (workers = 0)'}", markup=False)
    stop.wait()
    service.stop()
    metrics.process_stopped()


@keys_app.command("create")
def keys_create(
    config: ConfigOpt = None,
    owner: Annotated[str, typer.Option(help="tenant whose tasks the key sees")] = "default",
    name: Annotated[str, typer.Option(help="a label for people")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="may also use the admin API (accounts, keys, usage)")] = False,
    create_rate: CreateRateOpt = None, create_burst: CreateBurstOpt = None,
    query_rate: QueryRateOpt = None, query_burst: QueryBurstOpt = None,
    init: InitOpt = False,
) -> None:
    """Make a key, with its own rate limits if given. It is printed once and stored only as a hash."""
    from ..app import keys as key_store

    rates = key_store.KeyRates.of(_rates(create_rate, create_burst, query_rate, query_burst))
    db = _db(config, init=init)
    key, info = key_store.create_key(db, owner=owner, name=name, role="admin" if admin else "user", rates=rates)
    what = "an admin key" if admin else "a key"
    out.print(f"created {what} [bold]{info.id}[/bold] for owner {owner!r}; it is shown only now:")
    print(key)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, init: InitOpt = False) -> None:
    """List keys (ids, owners and their own rate limits; secrets are never stored). In a pipe, a
    line a key, its fields separated by tabs (a table would be cut to 80 columns there)."""
    from ..app import keys as key_store

    rows = [(info.id, info.owner, info.name, info.role, _when(info.created_at), _when(info.revoked_at) or "-",
             *_own_limits(info.rates)) for info in key_store.list_keys(_db(config, init=init))]
    if piped():
        for row in rows:
            print("\t".join(one_line(value) for value in row))
        return
    table = Table(Column("id", no_wrap=True), "owner", "name", "role", "created", "revoked", "creates", "queries")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@keys_app.command("limits")
def keys_limits(
    key_id: Annotated[str, typer.Argument(help="key id")],
    create_rate: CreateRateOpt = None, create_burst: CreateBurstOpt = None,
    query_rate: QueryRateOpt = None, query_burst: QueryBurstOpt = None,
    config: ConfigOpt = None, init: InitOpt = False,
) -> None:
    """Set a key's own rate limits ('default': back to the server's; an option left out stays).
    Every server applies them within a second."""
    from ..app import keys as key_store

    changes = _rates(create_rate, create_burst, query_rate, query_burst)
    info = key_store.set_rates(_db(config, init=init), key_id, changes)
    if info is None:
        fail(f"no live key {key_id!r}", 1)
    creates, queries = _own_limits(info.rates)
    print(f"key: {info.id}\nowner: {info.owner}\ncreates: {creates}\nqueries: {queries}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="key id (or the whole key)")], config: ConfigOpt = None,
                init: InitOpt = False) -> None:
    """Revoke a key; every server stops taking it within a second."""
    from ..app import keys as key_store

    if not key_store.revoke_key(_db(config, init=init), key_id):
        fail(f"no live key {key_id!r}", 1)
    out.print(f"revoked {key_id}", markup=False)


_RATE_OPTIONS = {"rate_create_per_second": "--create-rate", "rate_create_burst": "--create-burst",
                 "rate_query_per_second": "--query-rate", "rate_query_burst": "--query-burst"}


def _rates(*texts: str | None) -> dict[str, float | int | None]:
    """The rate limits the options set, in `_RATE_OPTIONS` order ('default': None, the server's),
    checked as the admin API checks them; exit 2 on a bad one."""
    from ..app import keys as key_store

    values: dict[str, float | int | None] = {}
    for (name, option), text in zip(_RATE_OPTIONS.items(), texts):
        if text is None:
            continue
        try:
            values |= key_store.check_rates({name: None if text.lower() == "default" else _number(text)})
        except ValueError as exc:
            fail(str(exc).replace(name, option, 1), 2)
    return values


def _number(text: str) -> int | float | str:
    """`text` as an int, else a float, else as it is (for the check to refuse)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _own_limits(rates: KeyRates) -> tuple[str, str]:
    """A key's own create and query limits for people: 'default' where it has none."""
    def one(per_second: float | None, burst: int | None) -> str:
        if per_second is None and burst is None:
            return "default"
        rate = "default" if per_second is None else "no limit" if per_second == 0 else f"{per_second:g}/s"
        return rate if burst is None or per_second == 0 else f"{rate}, burst {burst}"

    return (one(rates.rate_create_per_second, rates.rate_create_burst),
            one(rates.rate_query_per_second, rates.rate_query_burst))


def _db(config: Path | None, *, init: bool) -> Engine:
    from ..store.db import make_engine, migrate

    settings = _settings(config)
    _check_database(settings, init=init)
    engine = make_engine(settings.database_url)
    migrate(engine)
    return engine


def _check_database(settings: Settings, *, init: bool) -> None:
    """Say which database this command uses; refuse (exit 2) to create one unless `init`: a
    command run from another folder would otherwise make a fresh, empty one there."""
    from sqlalchemy.exc import DBAPIError

    from ..store.db import schema_missing

    where = _where(settings)
    err.print(f"database: {where}", markup=False)
    if init:
        return
    try:
        missing = schema_missing(settings.database_url)
    except DBAPIError as exc:
        fail(f"cannot reach the database {where}: {' '.join(str(exc.orig).split())}", 4)
    if missing is None:
        return
    fail(f"no ref2video database at {where} ({missing}). Point at the server's with --config FILE, "
         "REF2VIDEO_DATA_DIR (the default is ./ref2video-data, in the current folder) or "
         "REF2VIDEO_DATABASE_URL; or pass --init to create one there.", 2)


def _when(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


from .accounts import register as register_accounts  # noqa: E402  (after `app` exists)
from .tasks import register  # noqa: E402
from .webhooks import webhooks_app  # noqa: E402

register(app)
register_accounts(app)
app.add_typer(webhooks_app, name="webhooks")


def main() -> None:
    if "--json" not in sys.argv[1:]:
        app()
        return
    # Under --json even a usage error is a JSON document on stdout, beside the usual lines on stderr.
    try:
        code = app(standalone_mode=False)
    except _ClickException as exc:
        exc.show()  # type: ignore[attr-defined]
        print(json.dumps({"code": "InvalidUsage", "message": exc.format_message()}), flush=True)  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
