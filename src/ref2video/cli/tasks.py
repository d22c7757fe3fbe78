"""`ref2video generate | status | cancel | list`: thin commands over the Python SDK.

They talk to `--server` with `--key` (or REF2VIDEO_SERVER / REF2VIDEO_API_KEY). `generate`
with no server configured runs the whole service in this process on the embedded defaults.

Exit codes: 0 done; 1 the task failed or was canceled; 2 bad usage or configuration;
3 the API refused the request (4xx); 4 the server could not be reached or failed (5xx);
5 timed out waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..client import (
    APIError,
    Client,
    ClientError,
    ServerError,
    Task,
    TaskFailed,
    TransportError,
    WaitTimeout,
)

__all__ = ["register"]

console = Console()
err = Console(stderr=True)

ServerOpt = Annotated[Optional[str], typer.Option("--server", envvar="REF2VIDEO_SERVER", help="base URL of a ref2video server")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", envvar="REF2VIDEO_API_KEY", help="API key")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def register(app: typer.Typer) -> None:
    for command in (generate, status, cancel, list_tasks):
        app.command(name="list" if command is list_tasks else None)(command)


def generate(
    prompt: Annotated[str, typer.Argument(help="what happens; name references character1, character2, ...")],
    reference: Annotated[list[str], typer.Option("--reference", "-r", help="image or video: URL or local file (1 to 5, in character order)")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="where to save the video (default <task id>.mp4)")] = None,
    model: Annotated[str, typer.Option(help="wan2.6-r2v-flash, wan2.6-r2v or wan2.7-r2v")] = "wan2.6-r2v-flash",
    size: Annotated[Optional[str], typer.Option(help="W*H, e.g. 1280*720 (wan2.6)")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="720P or 1080P (wan2.7)")] = None,
    ratio: Annotated[Optional[str], typer.Option(help="16:9, 9:16, 1:1, 4:3 or 3:4 (wan2.7)")] = None,
    duration: Annotated[Optional[int], typer.Option(help="seconds, 2 to 10")] = None,
    shot: Annotated[Optional[str], typer.Option(help="single or multi")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    audio: Annotated[Optional[bool], typer.Option("--audio/--no-audio")] = None,
    watermark: Annotated[Optional[bool], typer.Option("--watermark/--no-watermark")] = None,
    negative: Annotated[Optional[str], typer.Option("--negative", help="negative prompt")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="give up waiting after this many seconds")] = None,
    server: ServerOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a task, show its progress, and save the video."""
    params = dict(model=model, size=size, duration=duration, shot_type=shot, seed=seed, audio=audio,
                  watermark=watermark, negative_prompt=negative, resolution=resolution, ratio=ratio)
    with _errors(), _connect(server, key, in_process_ok=True) as client:
        task = client.create(prompt, reference, **{k: v for k, v in params.items() if v is not None})
        task = _watch(client, task, timeout, quiet=as_json)
        if task.status != "SUCCEEDED":
            raise TaskFailed(task)
        path = client.download(task, output or Path(f"{task.id}.mp4"))
        if as_json:
            print(json.dumps({**task.raw, "file": str(Path(path).resolve())}))
        else:
            usage = task.usage
            console.print(f"[green]saved[/green] {path}  ({usage.output_video_duration} s, {usage.size}, "
                          f"engine {task.engine})" if usage else f"[green]saved[/green] {path}")


def status(task_id: str, server: ServerOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Show a task's state."""
    with _errors(), _connect(server, key) as client:
        task = client.get(task_id)
    if as_json:
        print(json.dumps(task.raw))
        return
    line = f"{task.id}  {task.status}"
    if task.status in ("PENDING", "RUNNING"):
        line += f"  {task.progress or 0}%"
    if task.code:
        line += f"  {task.code}: {task.message}"
    console.print(line)
    if task.video_url:
        console.print(task.video_url)


def cancel(task_id: str, server: ServerOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a task (PENDING, or ask a RUNNING one to stop)."""
    with _errors(), _connect(server, key) as client:
        client.cancel(task_id)
    print(json.dumps({"task_id": task_id, "canceled": True})) if as_json else console.print(f"cancel requested: {task_id}")


def list_tasks(
    status_filter: Annotated[Optional[str], typer.Option("--status", help="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED")] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=100)] = 20,
    server: ServerOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your tasks, newest first."""
    with _errors(), _connect(server, key) as client:
        result = client.list(page_no=page, page_size=page_size, status=status_filter, model=model)
    if as_json:
        rows = [{"task_id": t.id, "status": t.status, "model": t.model, "created": t.created.isoformat()}
                for t in result.items]
        print(json.dumps({"total": result.total, "page_no": result.page_no, "data": rows}))
        return
    table = Table("task", "status", "model", "created (UTC)", title=f"{result.total} task(s), page {result.page_no}/{max(result.total_page, 1)}")
    for t in result.items:
        table.add_row(t.id, t.status, t.model, t.created.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def _watch(client: Client, task: Task, timeout: float | None, *, quiet: bool) -> Task:
    """Wait for the task, with a live bar of its state and progress unless `quiet`."""
    if quiet:
        return client.wait(task, timeout=timeout)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
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
        raise typer.BadParameter("no server configured: pass --server and --key, or set REF2VIDEO_SERVER and REF2VIDEO_API_KEY")
    from ..config import Settings
    from ..embedded import embedded_server

    settings = Settings.load(os.environ.get("REF2VIDEO_CONFIG"))
    err.print(f"[dim]no server configured: running in this process on the embedded defaults (data in {settings.data_dir})[/dim]")
    with embedded_server(settings) as (url, own_key), Client(url, own_key) as client:
        yield client


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and an exit code."""
    try:
        yield
    except TaskFailed as exc:
        _fail(f"task {exc.task.id} ended {exc.task.status}" + (f": {exc.task.code}: {exc.task.message}" if exc.task.code else ""), 1)
    except WaitTimeout as exc:
        _fail(str(exc), 5)
    except (TransportError, ServerError) as exc:
        _fail(str(exc), 4)
    except APIError as exc:
        _fail(str(exc), 3)
    except ClientError as exc:
        _fail(str(exc), 2)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 2)


def _fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)

