"""`ref2video generate | status | cancel | list` as a user runs them: real processes, a real
server (or none: in-process), real files out."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from tests.api.test_cancel_list import set_ids
from tests.cli.procs import child_env, run
from tests.http_server import Route, Server
from tests.live import TEST_MODELS, LiveServer, ref_url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these commands see the server through HTTP, never its database."""
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


def test_generate_in_process_with_no_server(tmp_path: Path) -> None:
    picture = tmp_path / "hero.png"
    Image.new("RGB", (320, 400), (200, 60, 60)).save(picture)
    done = run(["generate", "character1 waves and says: 'hello'", "-r", str(picture), "--size", "1280*720",
                "--duration", "2", "--shot", "single", "--seed", "7", "-o", "out.mp4"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "running in this process" in done.stderr and "saved" in done.stdout
    assert f"database: {tmp_path / 'data' / 'ref2video.db'}" in done.stderr  # as every command that opens one
    assert "first API key" not in done.stderr + done.stdout  # a server's message, not this command's
    with av.open(str(tmp_path / "out.mp4")) as c:
        video = c.streams.video[0]
        assert (video.width, video.height) == (1280, 720)
        assert sum(1 for _ in c.decode(video=0)) == 60
        assert c.streams.audio  # the line is spoken


def test_generate_status_list_against_a_server(server: LiveServer, tmp_path: Path) -> None:
    opts = ["--server", server.url, "--key", server.key]
    done = run(["generate", "character1 steps=5 step_ms=20", "-r", ref_url("a.png"), "-o", "v.mp4", "--json", *opts],
               tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["output"]["task_status"] == "SUCCEEDED" and Path(result["file"]).exists()
    task_id = result["output"]["task_id"]

    shown = run(["status", task_id, "--json", *opts], tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["output"]["task_status"] == "SUCCEEDED"
    human = run(["status", task_id, *opts], tmp_path)
    assert "SUCCEEDED" in human.stdout and server.results_url in human.stdout

    listed = run(["list", "--json", *opts], tmp_path)
    assert listed.returncode == 0 and [t["task_id"] for t in json.loads(listed.stdout)["data"]] == [task_id]
    table = run(["list", *opts], tmp_path)
    assert task_id in table.stdout and "SUCCEEDED" in table.stdout


def test_cancel_and_exit_codes(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(workers=0)
    opts = ["--server", server.url, "--key", server.key]
    task_id = server.create()
    assert run(["cancel", task_id, *opts], tmp_path).returncode == 0
    assert server.get(task_id)["output"]["task_status"] == "CANCELED"

    again = run(["cancel", task_id, *opts], tmp_path)
    assert again.returncode == 3 and "UnsupportedOperation" in again.stderr and "Traceback" not in again.stderr
    bad_key = run(["status", task_id, "--server", server.url, "--key", "r2v-nope-nope"], tmp_path)
    assert bad_key.returncode == 3 and "InvalidApiKey" in bad_key.stderr
    nowhere = run(["status", task_id, "--server", "http://127.0.0.1:9", "--key", "k"], tmp_path)
    assert nowhere.returncode == 4 and "Traceback" not in nowhere.stderr
    no_server = run(["status", task_id], tmp_path)
    assert no_server.returncode == 2 and "no server configured" in no_server.stderr


def test_a_failing_task_exits_1_with_its_code(server: LiveServer, tmp_path: Path) -> None:
    done = run(["generate", "fail=InvalidParameter", "-r", ref_url("a.png"), "--server", server.url,
                "--key", server.key], tmp_path)
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "InvalidParameter" in done.stderr and "Traceback" not in done.stderr


def opts(server: LiveServer) -> list[str]:
    return ["--server", server.url, "--key", server.key]


def one_document(done: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    """stdout is exactly one JSON document, on one line."""
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    return document


def test_piped_output_never_wraps_and_status_is_key_value_lines(server: LiveServer, tmp_path: Path) -> None:
    made = run(["generate", "character1 waves steps=2", "-r", ref_url("a.png"), "-o", "v.mp4", *opts(server)],
               tmp_path, COLUMNS="40")
    assert made.returncode == 0, made.stderr
    (task_id,) = re.findall(r"^task ([0-9a-f-]{36})$", made.stderr, re.M)  # printed whole, on its own line
    assert server.get(task_id)["output"]["task_status"] == "SUCCEEDED"

    shown = run(["status", task_id, *opts(server)], tmp_path, COLUMNS="40")
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(": ", 1) for line in shown.stdout.splitlines())
    assert fields["task_id"] == task_id and fields["status"] == "SUCCEEDED" and fields["engine"] == "scripted"
    url = fields["video_url"]
    assert len(url) > 80 and url.startswith(server.results_url) and httpx.get(url).status_code == 200

    listed = run(["list", *opts(server)], tmp_path, COLUMNS="40")
    assert listed.returncode == 0
    (row,) = [line.split("\t") for line in listed.stdout.splitlines()]
    assert row[:3] == [task_id, "SUCCEEDED", "wan2.6-r2v-flash"]


def test_json_is_one_document_in_every_outcome(server: LiveServer, tmp_path: Path) -> None:
    ok = run(["generate", "character1 steps=2", "-r", ref_url("a.png"), "-o", "ok.mp4", "--json", *opts(server)],
             tmp_path)
    assert ok.returncode == 0, ok.stderr
    document = one_document(ok)
    assert document["output"]["task_status"] == "SUCCEEDED" and document["output"]["video_url"]
    assert document["file"] == str((tmp_path / "ok.mp4").resolve())

    failed = run(["generate", "character1 fail=Boom", "-r", ref_url("a.png"), "--json", *opts(server)], tmp_path)
    assert failed.returncode == 1 and "Boom" in failed.stderr
    output = one_document(failed)["output"]
    assert output["task_status"] == "FAILED" and output["code"] == "Boom"
    failed_id = output["task_id"]
    status = run(["status", failed_id, "--json", *opts(server)], tmp_path)
    assert status.returncode == 1 and one_document(status)["output"]["code"] == "Boom"
    piped = run(["status", failed_id, *opts(server)], tmp_path)
    assert piped.returncode == 1 and "status: FAILED" in piped.stdout and "code: Boom" in piped.stdout

    # A generate that ends CANCELED, canceled from another command by a prefix of its id.
    gate = tmp_path / "never"
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ref2video", "generate", f"character1 gate={gate}", "-r", ref_url("a.png"), "--json",
         *opts(server)], env=child_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        running = _wait_for_a_running_task(server)
        canceled = run(["cancel", running[:8], "--json", *opts(server)], tmp_path)
        assert canceled.returncode == 0, canceled.stderr
        assert one_document(canceled) == {"task_id": running, "canceled": True}
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    assert one_document(subprocess.CompletedProcess([], 1, stdout, stderr))["output"]["task_status"] == "CANCELED"
    status = run(["status", running, "--json", *opts(server)], tmp_path)
    assert status.returncode == 1 and one_document(status)["output"]["task_status"] == "CANCELED"

    # Errors are a document too, {"code", "message"}, with the exit code of README.md.
    again = run(["cancel", running, "--json", *opts(server)], tmp_path)
    assert again.returncode == 3 and one_document(again)["code"] == "UnsupportedOperation"
    nowhere = run(["status", running, "--json", "--server", "http://127.0.0.1:9", "--key", "k"], tmp_path)
    assert nowhere.returncode == 4 and one_document(nowhere)["code"] == "TransportError"
    unset = run(["status", running, "--json"], tmp_path)
    assert unset.returncode == 2 and one_document(unset)["code"] == "InvalidUsage"
    assert "no server configured" in unset.stderr
    missing = run(["status", "ffff", "--json", *opts(server)], tmp_path)
    assert missing.returncode == 1 and one_document(missing)["code"] == "TaskNotFound"


def _wait_for_a_running_task(server: LiveServer) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = server.client().get("/api/v1/tasks", params={"status": "RUNNING"}).json()["data"]
        if rows:
            return rows[0]["task_id"]
        time.sleep(0.05)
    raise AssertionError("no task started running")


def test_ids_by_prefix_and_exit_codes(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(workers=0)
    made = [server.create() for _ in range(3)]
    one, two = "abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"
    set_ids(server, {made[0]: one, made[1]: two})

    shown = run(["status", "abcd1", *opts(server)], tmp_path)
    assert shown.returncode == 0 and f"task_id: {one}" in shown.stdout and "status: PENDING" in shown.stdout
    several = run(["status", "abcd", *opts(server)], tmp_path)
    assert several.returncode == 2 and one in several.stderr and two in several.stderr
    none = run(["status", "ffff", *opts(server)], tmp_path)
    assert none.returncode == 1 and "no task id starts with 'ffff'" in none.stderr
    short = run(["status", "abc", *opts(server)], tmp_path)
    assert short.returncode == 2 and "at least 4 characters" in short.stderr
    unknown = run(["status", "00000000-0000-4000-8000-000000000000", *opts(server)], tmp_path)
    assert unknown.returncode == 1 and "status: UNKNOWN" in unknown.stdout and "UNKNOWN" in unknown.stderr

    stopped = run(["cancel", "abcd2", *opts(server)], tmp_path)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"cancel requested: {two}"
    assert server.get(two)["output"]["task_status"] == "CANCELED"
    listed = run(["list", *opts(server)], tmp_path)
    assert sorted(line.split("\t")[0] for line in listed.stdout.splitlines()) == sorted([one, two, made[2]])


def test_generate_in_process_json_names_the_file_and_says_nothing_of_a_server(tmp_path: Path) -> None:
    picture = tmp_path / "hero.png"
    Image.new("RGB", (320, 240), (20, 160, 60)).save(picture)
    done = run(["generate", "character1 waves steps=2", "-r", str(picture), "-o", "out.mp4", "--json"], tmp_path,
               REF2VIDEO_MODELS=json.dumps(TEST_MODELS))
    assert done.returncode == 0, done.stderr
    document = one_document(done)
    assert document["file"] == str((tmp_path / "out.mp4").resolve()) and (tmp_path / "out.mp4").is_file()
    assert document["output"]["task_status"] == "SUCCEEDED" and "video_url" not in document["output"]
    assert "first API key" not in done.stderr and "Bearer" not in done.stderr
    # The key it used is the folder's first key, kept where `serve` and the README say.
    keys = run(["keys", "list"], tmp_path)
    assert keys.returncode == 0 and keys.stdout.count("first key") == 1
    assert (tmp_path / "data" / "first-api-key.txt").is_file()


def test_the_readmes_other_exit_codes(server: LiveServer, tmp_path: Path) -> None:
    """5 for a wait that timed out, 4 for a server's 5xx and for a database that does not answer,
    2 for bad usage, with one JSON document under --json in each case."""
    slow = run(["generate", "character1 steps=100 step_ms=100", "-r", ref_url("a.png"), "--timeout", "0.5",
                "--json", *opts(server)], tmp_path)
    assert slow.returncode == 5, slow.stderr
    assert one_document(slow)["code"] == "WaitTimeout"

    broken = Server()
    try:
        task_id = "abcd1111-0000-4000-8000-000000000000"
        envelope = json.dumps({"request_id": "r", "code": "InternalError", "message": "boom"}).encode()
        broken.routes[f"/api/v1/tasks/{task_id}"] = Route(envelope, status=500,
                                                         headers={"Content-Type": "application/json"})
        failed = run(["status", task_id, "--json", "--server", broken.url(""), "--key", "k"], tmp_path)
    finally:
        broken.close()
    assert failed.returncode == 4, failed.stderr
    assert one_document(failed)["code"] == "InternalError"

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    away = run(["keys", "list"], tmp_path, REF2VIDEO_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/test")
    assert away.returncode == 4 and "cannot reach the database" in away.stderr
    assert "Traceback" not in away.stderr

    usage = run(["status", "--json"], tmp_path)  # the task id is missing
    assert usage.returncode == 2
    assert one_document(usage)["code"] == "InvalidUsage"
