"""`ref2video webhooks add | list | remove | secret | log`: an owner's webhook endpoints, against
the configured database (like `ref2video keys`). docs/webhooks.md is the guide.

The server's modules are imported by the commands, not here (see `main`)."""

from __future__ import annotations

from datetime import datetime, UTC
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ApiError
from ..protocol import WEBHOOK_EVENTS
from .output import emit_json, fail, one_line, out, piped

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(help="Register, list and remove webhook endpoints; show secrets and deliveries.",
                           no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file")]
OwnerOpt = Annotated[str, typer.Option(help="the owner (tenant) whose task events these are")]
InitOpt = Annotated[bool, typer.Option("--init", help="create the database if there is none")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout, for scripts")]
_EVENTS = ", ".join(WEBHOOK_EVENTS.values())


def _db(config: Path | None, init: bool):  # type: ignore[no-untyped-def]
    from .main import _db as open_db  # main registers this app, so import it late

    return open_db(config, init=init)


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="http(s) URL that receives the signed POSTs")],
    event: Annotated[list[str] | None, typer.Option(
        "--event", "-e", help=f"an event to send ({_EVENTS}); repeat it; default all")] = None,
    owner: OwnerOpt = "default",
    config: ConfigOpt = None,
    init: InitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Register an endpoint; prints its id and signing secret (`webhooks secret` shows it again)."""
    from ..app import webhooks

    try:
        endpoint, secret = webhooks.add(_db(config, init), owner, url, event or None)
    except ApiError as exc:
        fail(exc.message, 2, as_json=as_json)
    if as_json:
        emit_json({"id": endpoint.id, "owner": owner, "url": endpoint.url, "events": endpoint.events,
                   "secret": secret})
        return
    out.print(f"added endpoint {endpoint.id} for owner {owner!r}: {endpoint.url} ({', '.join(endpoint.events)})",
              markup=False)
    out.print("signing secret (verify deliveries with it):", markup=False)
    print(secret)


@webhooks_app.command("list")
def list_endpoints(owner: OwnerOpt = "default", config: ConfigOpt = None, init: InitOpt = False,
                   as_json: JsonOpt = False) -> None:
    """List the owner's endpoints (secrets are shown by `webhooks secret`)."""
    from ..app import webhooks

    endpoints = webhooks.list(_db(config, init), owner)
    if as_json:
        emit_json([{"id": e.id, "url": e.url, "events": e.events, "created_at": e.created_at} for e in endpoints])
        return
    _show(["id", "url", "events", "created"],
          [[e.id, e.url, ",".join(e.events), _when(e.created_at)] for e in endpoints])


@webhooks_app.command("remove")
def remove(endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id (ep_...)")], owner: OwnerOpt = "default",
           config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Remove an endpoint; what it has not been sent yet is given up."""
    from ..app import webhooks

    if not webhooks.remove(_db(config, init), owner, endpoint_id):
        fail(f"owner {owner!r} has no endpoint {endpoint_id!r}", 1)
    out.print(f"removed {endpoint_id}", markup=False)


@webhooks_app.command("secret")
def secret(endpoint_id: Annotated[str | None, typer.Argument(
               help="an endpoint's id; without it, the secret of the owner's X-Ref2video-Callback deliveries")] = None,
           owner: OwnerOpt = "default", config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Print a signing secret: an endpoint's, or the owner's callback secret (made on first use)."""
    from ..app import webhooks

    value = webhooks.secret(_db(config, init), owner, endpoint_id)
    if value is None:
        fail(f"owner {owner!r} has no endpoint {endpoint_id!r}", 1)
    print(value)


@webhooks_app.command("log")
def log(owner: OwnerOpt = "default", task: Annotated[str | None, typer.Option(
            help="only this task's: its id or a prefix of it (4 characters or more)")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 50, config: ConfigOpt = None, init: InitOpt = False,
        as_json: JsonOpt = False) -> None:
    """The owner's latest deliveries, newest first: state, attempts and the last error."""
    from ..app import webhooks

    if task is not None and len(task.strip()) < 4:
        fail("a task id prefix needs 4 characters or more", 2)
    rows = webhooks.deliveries(_db(config, init), owner, limit=limit, task_id=task and task.strip())
    if as_json:
        emit_json([r.__dict__ for r in rows])
        return
    _show(["webhook-id", "event", "task", "to", "state", "attempts", "last error"],
          [[r.message_id, r.event, r.task_id, r.endpoint_id or r.url, r.state, str(r.attempts), r.last_error or ""]
           for r in rows])


def _show(header: list[str], rows: list[list[str]]) -> None:
    """A table for people; in a pipe, one tab-separated line per row, nothing cut."""
    if piped():
        for row in rows:
            print("\t".join(one_line(cell) for cell in row))
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _when(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
