"""`ref2video serve` as a user starts it: what it says, and a port already taken."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.acceptance.procs import env_for, spawn, stop, wait_healthy
from tests.cli.procs import run
from tests.live import TEST_MODELS, free_port


def test_a_port_in_use_fails_before_anything_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(["serve", "--port", str(port)], tmp_path)
    assert done.returncode == 4
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing migrated, no first key, no workers


def test_a_database_that_does_not_answer_is_exit_4_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = run(["serve", "--port", str(free_port())], tmp_path,
               REF2VIDEO_DATABASE_URL=f"postgresql://u:secret@127.0.0.1:{port}/x")
    assert done.returncode == 4, done.stderr
    assert f"cannot reach the database postgresql://u:***@127.0.0.1:{port}/x" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_a_start_up_that_fails_is_exit_4_not_uvicorns_3(tmp_path: Path) -> None:
    done = run(["serve", "--port", str(free_port())], tmp_path, REF2VIDEO_MODELS='{"x": "nosuch"}')
    assert done.returncode == 4, done.stderr
    assert "engine 'nosuch' is not a 'module:attribute' import string" in done.stderr
    assert done.stderr.rstrip().endswith("ref2video could not start: its error is logged above")


def test_serve_names_its_web_page_docs_and_database(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path / "data", "", models=json.dumps(TEST_MODELS))
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--port", str(port)], env, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        stop(proc)
    said = log.read_text()
    assert f"ref2video on http://127.0.0.1:{port}/  (web page; API docs at http://127.0.0.1:{port}/docs)" in said
    assert f"database {tmp_path / 'data' / 'ref2video.db'}" in said
