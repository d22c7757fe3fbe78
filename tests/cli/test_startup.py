"""The client commands start without the server: `ref2video status | list | ...` and the help
load typer, rich and the client (httpx), never the service, its database or the media stack,
which cost seconds to import. Each command runs in a fresh process that then reports what it
imported; no clock is read (how fast belongs in benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ref2video
from tests.cli.procs import child_env
from tests.http_server import Server
from tests.live import free_port

# Modules of the server, and the libraries only it needs.
SERVER = ("ref2video.api", "ref2video.app", "ref2video.config", "ref2video.embedded", "ref2video.engines",
          "ref2video.media", "ref2video.queue", "ref2video.service", "ref2video.storage", "ref2video.store",
          "ref2video.webhooks", "ref2video.metrics")
LIBRARIES = ("sqlalchemy", "alembic", "numpy", "av", "PIL", "uvicorn", "fastapi", "starlette", "pydantic_settings",
             "prometheus_client")

TASK_ID = "0b3f5c1e-2d4a-4e6f-8a9b-1c2d3e4f5a6b"

# Runs the command line as `python -m ref2video` does, then writes its exit status and every
# module it imported to argv[1]. ZERO_BACKOFF: retries without waiting (the closed-port case).
CHILD = """
import json, os, sys
out, args = sys.argv[1], sys.argv[2:]
if os.environ.get("ZERO_BACKOFF"):
    from ref2video.client import _base
    _base._BaseClient._backoff = lambda self, attempt: 0.0
from ref2video.cli.main import main
sys.argv = ["ref2video", *args]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def server_modules(modules: list[str]) -> list[str]:
    return [name for name in modules
            if name.startswith(tuple(f"{m}." for m in SERVER)) or name in SERVER
            or name.split(".")[0] in LIBRARIES]


def run_cli(tmp: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
    report = tmp / "report.json"
    done = subprocess.run([sys.executable, "-c", CHILD, str(report), *args], env=child_env(tmp, **env), cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    assert report.exists(), done.stderr
    result = json.loads(report.read_text())
    return done, result["code"], result["modules"]


@pytest.fixture(scope="module")
def api() -> Iterator[Server]:
    """A stand-in for a ref2video server: one SUCCEEDED task, and a list that refuses the key."""
    server = Server()
    task = {"request_id": "r1", "output": {"task_id": TASK_ID, "task_status": "SUCCEEDED",
                                           "video_url": server.url("/v.mp4")}}
    server.serve(f"/api/v1/tasks/{TASK_ID}", json.dumps(task).encode(), headers={"Content-Type": "application/json"})
    refusal = {"request_id": "r2", "code": "InvalidApiKey", "message": "Invalid API-key provided."}
    server.serve("/api/v1/tasks?page_no=1&page_size=20", json.dumps(refusal).encode(), status=401,
                 headers={"Content-Type": "application/json"})
    yield server
    server.close()


def test_status_of_a_task_imports_no_server(api: Server, tmp_path: Path) -> None:
    done, code, modules = run_cli(tmp_path, "status", TASK_ID, "--server", api.url(""), "--key", "k")
    assert code == 0, done.stderr
    assert "status: SUCCEEDED" in done.stdout and api.hits_for(f"/api/v1/tasks/{TASK_ID}")
    assert "ref2video.client" in modules  # it did run the client
    assert server_modules(modules) == []


def test_a_refused_list_imports_no_server(api: Server, tmp_path: Path) -> None:
    done, code, modules = run_cli(tmp_path, "list", "--json", "--server", api.url(""), "--key", "k")
    assert code == 3, done.stderr
    assert json.loads(done.stdout)["code"] == "InvalidApiKey"
    assert server_modules(modules) == []


def test_an_unreachable_server_imports_no_server(tmp_path: Path) -> None:
    done, code, modules = run_cli(tmp_path, "status", "abcd1234", "--server", f"http://127.0.0.1:{free_port()}",
                                  "--key", "k", ZERO_BACKOFF="1")
    assert code == 4, done.stderr
    assert "Connection refused" in done.stderr or "ConnectError" in done.stderr
    assert server_modules(modules) == []


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["webhooks", "add", "--help"],
                                  ["keys", "create", "--help"], ["accounts", "--help"]])
def test_help_imports_no_server(args: list[str], tmp_path: Path) -> None:
    done, code, modules = run_cli(tmp_path, *args)
    assert code == 0, done.stderr
    if args[0] == "webhooks":
        assert "task.running" in done.stdout  # the event names, without the outbox that sends them
    assert server_modules(modules) == []


def test_the_check_sees_a_server_import() -> None:
    """The assertions above can fail: a module of the server, or one of its libraries, is caught."""
    assert server_modules(["ref2video.service", "ref2video.store.db", "sqlalchemy.engine", "numpy", "av",
                           "ref2video.cli.main", "ref2video.client", "typer", "httpx", "avx"]) == [
        "ref2video.service", "ref2video.store.db", "sqlalchemy.engine", "numpy", "av"]


def test_the_top_level_names_load_on_first_use() -> None:
    """`ref2video.Client`, `ref2video.Settings`, ... are the objects their modules define."""
    from ref2video import client, config, errors, protocol, spec
    from ref2video.engines import base

    homes = {"Client": client, "AsyncClient": client, "Settings": config, "Status": protocol, "TaskSpec": spec,
             "Engine": base, "GenerationRequest": base, "GenerationResult": base,
             "JobContext": base, "EngineError": errors, "RetryableEngineError": errors,
             "TaskCanceled": errors}
    assert set(ref2video.__all__) == {"__version__", *homes}
    for name, module in homes.items():
        assert getattr(ref2video, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ref2video.Nope  # noqa: B018  (the look-up is the test)
