"""`ref2video serve | worker | keys` over `Service` and `create_app`; the task commands
(`generate`, `status`, `cancel`, `list`) are in `tasks.py`, over the Python SDK."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..config import Settings
from ..service import Service
from ..store import keys as key_store
from ..store.db import make_engine, migrate

__all__ = ["app", "main"]

app = typer.Typer(help="ref2video: reference-to-video tasks on your own terms.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML settings file")]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except Exception as exc:  # a bad file or value: one clear line, no traceback
        err.print(f"[red]error:[/red] invalid configuration: {exc}")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[Optional[str], typer.Option(help="address to listen on")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to listen on")] = None,
    workers: Annotated[Optional[int], typer.Option(help="tasks run at once in this process (0: API only)")] = None,
) -> None:
    """Run the HTTP API (and, by default, workers in the same process)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from ..api.app import create_app
    from ..api.server import server_config

    settings = _settings(config, host=host, port=port, workers=workers)
    _logging(settings)
    console.print(f"ref2video on http://{settings.host}:{settings.port}  (docs at /docs, data in {settings.data_dir})")
    server = uvicorn.Server(server_config(create_app(settings), settings))
    server.run()
    if not server.started:  # as `uvicorn.run` does: the app or the socket failed to start
        raise typer.Exit(STARTUP_FAILURE)


@app.command()
def worker(config: ConfigOpt = None, workers: Annotated[Optional[int], typer.Option()] = None) -> None:
    """Run workers only, against the configured database (scale-out)."""
    settings = _settings(config, workers=workers)
    _logging(settings)
    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start(api=False)
    local = service.registry.models
    relayed = sorted(settings.relay_models) if service.relay is not None else []
    parts = [f"{settings.workers} slot(s) for {', '.join(local)}"] if local else []
    parts += [f"the dashscope relay for {', '.join(relayed)}"] if relayed else []
    console.print(f"ref2video worker: {'; '.join(parts) or 'nothing to run (workers = 0)'}")
    stop.wait()
    service.stop()


@keys_app.command("create")
def keys_create(
    config: ConfigOpt = None,
    owner: Annotated[str, typer.Option(help="tenant whose tasks the key sees")] = "default",
    name: Annotated[str, typer.Option(help="a label for people")] = "",
) -> None:
    """Make a key. It is printed once and stored only as a hash."""
    db = _db(config)
    key, info = key_store.create_key(db, owner=owner, name=name)
    console.print(f"created key [bold]{info.id}[/bold] for owner {owner!r}; it is shown only now:")
    print(key)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List keys (ids and owners; secrets are never stored)."""
    table = Table("id", "owner", "name", "created", "revoked")
    for info in key_store.list_keys(_db(config)):
        table.add_row(info.id, info.owner, info.name, _when(info.created_at), _when(info.revoked_at) or "-")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="key id (or the whole key)")], config: ConfigOpt = None) -> None:
    """Revoke a key; it stops working on the next request."""
    if not key_store.revoke_key(_db(config), key_id):
        err.print(f"[red]error:[/red] no live key {key_id!r}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def _db(config: Path | None):  # noqa: ANN202
    engine = make_engine(_settings(config).database_url)
    migrate(engine)
    return engine


def _when(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


from .tasks import register  # noqa: E402  (after `app` exists)

register(app)


def main() -> None:
    app()
