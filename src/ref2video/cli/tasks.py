"""`ref2video generate | status | cancel | list`: thin commands over the Python SDK.

They talk to `--server` with `--key` (or REF2VIDEO_SERVER / REF2VIDEO_API_KEY). `generate`
with no server configured runs the whole service in this process on the embedded defaults.
A task id may be given by a unique prefix of at least 4 characters (`Client.resolve`).

Exit codes (README.md): 0 done; 1 the task failed, was canceled or is not found; 2 bad usage
or configuration; 3 the API refused the request (4xx); 4 the server could not be reached or
failed (5xx); 5 timed out waiting. Under --json stdout holds one JSON document whatever the
outcome: the task, or {"code", "message"} for an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..client import (
    AmbiguousTaskId,
    APIError,
    Client,
    ClientError,
    ServerError,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskPage,
    TransportError,
    WaitTimeout,
)
from .output import emit_json, err, fail, one_line, out, piped

__all__ = ["register"]

ServerOpt = Annotated[
    str | None, typer.Option("--server", envvar="REF2VIDEO_SERVER", help="base URL of a ref2video server")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="REF2VIDEO_API_KEY", help="API key")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout, for scripts")]
TaskIdArg = Annotated[str, typer.Argument(help="task id, or a unique prefix of it (at least 4 characters)")]

# The states `status` exits 0 for: the task is fine so far. FAILED, CANCELED and UNKNOWN exit 1.
_HEALTHY = ("PENDING", "RUNNING", "SUCCEEDED")


def register(app: typer.Typer) -> None:
    for command in (generate, status, cancel, list_tasks):
        app.command(name="list" if command is list_tasks else None)(command)


def generate(
    prompt: Annotated[str, typer.Argument(help="what happens; name references character1, character2, ...")],
    reference: Annotated[list[str], typer.Option(
        "--reference", "-r", help="image or video: URL or local file (1 to 5, in character order)")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="where to save the video (default <task id>.mp4)")] = None,
    model: Annotated[str, typer.Option(help="wan2.6-r2v-flash, wan2.6-r2v or wan2.7-r2v")] = "wan2.6-r2v-flash",
    size: Annotated[str | None, typer.Option(help="W*H, e.g. 1280*720 (wan2.6)")] = None,
    resolution: Annotated[str | None, typer.Option(help="720P or 1080P (wan2.7)")] = None,
    ratio: Annotated[str | None, typer.Option(help="16:9, 9:16, 1:1, 4:3 or 3:4 (wan2.7)")] = None,
    duration: Annotated[int | None, typer.Option(help="seconds, 2 to 10")] = None,
    shot: Annotated[str | None, typer.Option(help="single or multi")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio")] = None,
    watermark: Annotated[bool | None, typer.Option("--watermark/--no-watermark")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="negative prompt")] = None,
    timeout: Annotated[float | None, typer.Option(help="give up waiting after this many seconds")] = None,
    server: ServerOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a task, show its progress, and save the video."""
    in_process = not server  # _connect runs a server here exactly when none is named
    with _errors(as_json, in_process=in_process), _connect(server, key, in_process_ok=True) as client:
        # An option not given is None, as create's own default for each of these is.
        task = client.create(prompt, reference, model=model, size=size, duration=duration, shot_type=shot, seed=seed,
                             audio=audio, watermark=watermark, negative_prompt=negative, resolution=resolution,
                             ratio=ratio)
        if not as_json:
            err.print(f"task {task.id}")  # the whole id at once: `status` and `cancel` from another shell
        task = _watch(client, task, timeout, quiet=as_json)
        if task.status != "SUCCEEDED":
            raise TaskFailed(task)
        path = Path(client.download(task, output or Path(f"{task.id}.mp4"))).resolve()
    if as_json:
        emit_json({**_document(task, in_process=in_process), "file": str(path)})
        return
    usage = task.usage
    detail = f"  ({usage.output_video_duration} s, {usage.size or usage.ratio}, engine {task.engine})" if usage else ""
    out.print(Text.assemble(("saved", "green"), f" {path}{detail}"))


def status(task_id: TaskIdArg, server: ServerOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Show a task's state; exits 1 when it FAILED, was CANCELED or is UNKNOWN."""
    with _errors(as_json), _connect(server, key) as client:
        task = client.get(client.resolve(task_id))
    if as_json:
        emit_json(task.raw)
    elif piped():
        for name, value in _fields(task):
            print(f"{name}: {one_line(value)}")
    else:
        line = f"{task.id}  {task.status}"
        if task.status in ("PENDING", "RUNNING"):
            line += f"  {task.progress or 0}%"
        if task.code:
            line += f"  {task.code}: {task.message}"
        out.print(line, markup=False)
        if task.video_url:
            out.print(task.video_url, markup=False)
    if task.status == "UNKNOWN":
        err.print(f"task {task.id} is UNKNOWN: this key has no such task, or it expired", markup=False)
    if task.status not in _HEALTHY:
        raise typer.Exit(1)


def cancel(task_id: TaskIdArg, server: ServerOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a task (PENDING, or ask a RUNNING one to stop)."""
    with _errors(as_json), _connect(server, key) as client:
        full_id = client.resolve(task_id)
        client.cancel(full_id)
    if as_json:
        emit_json({"task_id": full_id, "canceled": True})
    else:
        out.print(f"cancel requested: {full_id}", markup=False)


def list_tasks(
    status_filter: Annotated[str | None, typer.Option(
        "--status", help="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=100)] = 20,
    server: ServerOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your tasks, newest first: a table on a terminal, tab-separated lines in a pipe."""
    with _errors(as_json), _connect(server, key) as client:
        result = client.list(page_no=page, page_size=page_size, status=status_filter, model=model)
    if as_json:
        rows = [{"task_id": t.id, "status": t.status, "model": t.model, "created": t.created.isoformat()}
                for t in result.items]
        emit_json({"total": result.total, "page_no": result.page_no, "data": rows})
        return
    if piped():
        for t in result.items:
            print("\t".join((t.id, t.status, t.model, t.created.strftime("%Y-%m-%dT%H:%M:%SZ"))))
        return
    out.print(_table(result))


def _table(result: TaskPage) -> Table:
    """The list for people. Ids are never cut: where the terminal is too narrow for every column,
    the model is left out, then the time is shortened, then left out too (a pipe has them all)."""
    title = f"{result.total} task(s), page {result.page_no}/{max(result.total_page, 1)}"
    rows = [{"task": t.id, "status": t.status, "model": t.model, "long": t.created.strftime("%Y-%m-%d %H:%M:%S"),
             "short": t.created.strftime("%m-%d %H:%M")} for t in result.items]
    layouts = (("task", "status", "model", "long"), ("task", "status", "long"), ("task", "status", "short"),
               ("task", "status"))
    for names in layouts:
        table = Table(title=title, box=box.SIMPLE_HEAD)
        for name in names:
            wide = max((len(row[name]) for row in rows), default=0) if name == "task" else None
            table.add_column("created (UTC)" if name in ("long", "short") else name, no_wrap=True, min_width=wide)
        for row in rows:
            table.add_row(*(row[name] for name in names))
        if Measurement.get(out, out.options.update(max_width=1 << 16), table).maximum <= out.width:
            break
    return table


def _fields(task: Task) -> list[tuple[str, object]]:
    """`status`'s `key: value` lines for scripts, in a fixed order; absent values are left out."""
    fields: list[tuple[str, object | None]] = [
        ("task_id", task.id), ("status", task.status),
        ("progress", task.progress if task.status in ("PENDING", "RUNNING") else None),
        ("queue_position", task.queue_position), ("submit_time", task.submit_time),
        ("scheduled_time", task.scheduled_time), ("end_time", task.end_time), ("engine", task.engine),
        ("seed", task.seed), ("code", task.code), ("message", task.message), ("video_url", task.video_url),
    ]
    return [(name, value) for name, value in fields if value is not None]


def _document(task: Task, *, in_process: bool) -> dict[str, Any]:
    """The task's JSON; an in-process server is gone once the command ends, so its video_url is dropped."""
    if not in_process:
        return task.raw
    output = {k: v for k, v in (task.raw.get("output") or {}).items() if k != "video_url"}
    return {**task.raw, "output": output}


def _watch(client: Client, task: Task, timeout: float | None, *, quiet: bool) -> Task:
    """Wait for the task, with a live bar of its state and progress unless `quiet`."""
    if quiet:
        return client.wait(task, timeout=timeout)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        row = bar.add_task(f"{task.id[:8]} PENDING", total=100)

        def show(t: Task) -> None:
            label = f"{t.id[:8]} {t.status}"
            if t.status == "PENDING" and t.queue_position:
                label += f" (#{t.queue_position + 1} in queue)"
            bar.update(row, description=label, completed=100 if t.status == "SUCCEEDED" else (t.progress or 0))

        return client.wait(task, timeout=timeout, poll_interval=0.5, on_progress=show)


@contextlib.contextmanager
def _connect(server: str | None, key: str | None, *, in_process_ok: bool = False) -> Iterator[Client]:
    """A client for the configured server, or for one started in this process."""
    if server:
        if not key:
            raise typer.BadParameter("--key (or REF2VIDEO_API_KEY) is needed with --server")
        with Client(server, key) as client:
            yield client
        return
    if not in_process_ok:
        raise typer.BadParameter("no server configured: pass --server and --key,"
                                 " or set REF2VIDEO_SERVER and REF2VIDEO_API_KEY")
    from ..config import Settings
    from ..embedded import embedded_server
    from ..store.db import describe

    settings = Settings.load(os.environ.get("REF2VIDEO_CONFIG"))
    err.print(f"[dim]no server configured: running in this process on the embedded defaults "
              f"(data in {settings.data_dir.resolve()})[/dim]", highlight=False)
    err.print(f"database: {describe(settings.database_url)}", markup=False)  # as every command that opens one
    with embedded_server(settings) as (url, own_key), Client(url, own_key) as client:
        yield client


@contextlib.contextmanager
def _errors(as_json: bool, *, in_process: bool = False) -> Iterator[None]:
    """Turn every expected failure into one line on stderr and an exit code (and, under --json,
    one JSON document on stdout: the task when there is one, else {"code", "message"})."""
    try:
        yield
    except TaskFailed as exc:
        document = _document(exc.task, in_process=in_process) if exc.task.raw else None
        fail(str(exc), 1, as_json=as_json, document=document or _error("TaskFailed", exc))
    except WaitTimeout as exc:
        fail(str(exc), 5, as_json=as_json, document={**_error("WaitTimeout", exc), "task": exc.task.raw})
    except TransportError as exc:
        fail(str(exc), 4, as_json=as_json, document=_error("TransportError", exc))
    except APIError as exc:  # refused (4xx: 3), or the server failed (ServerError, 5xx: 4)
        document = {"code": exc.code, "message": exc.message, "request_id": exc.request_id,
                    "status_code": exc.status_code}
        fail(str(exc), 4 if isinstance(exc, ServerError) else 3, as_json=as_json, document=document)
    except TaskNotFound as exc:  # an unknown task is a failure to find it, as an UNKNOWN status is
        fail(str(exc), 1, as_json=as_json, document=_error("TaskNotFound", exc))
    except AmbiguousTaskId as exc:
        fail(str(exc), 2, as_json=as_json, document={**_error("AmbiguousTaskId", exc), "candidates": exc.candidates})
    except (ClientError, FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2, as_json=as_json, document=_error("InvalidUsage", exc))


def _error(code: str, exc: Exception) -> dict[str, Any]:
    return {"code": code, "message": str(exc)}
