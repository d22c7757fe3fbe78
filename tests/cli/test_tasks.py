"""`ref2video generate | status | cancel | list` as a user runs them: real processes, a real
server (or none: in-process), real files out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
from PIL import Image

from tests.live import ROOT, LiveServer, ref_url


def run(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REF2VIDEO_")}
    environment.update(PYTHONPATH=str(ROOT), REF2VIDEO_DATA_DIR=str(tmp / "data"), COLUMNS="120", **env)
    return subprocess.run([sys.executable, "-m", "ref2video", *args], env=environment, cwd=tmp,
                          capture_output=True, text=True, timeout=300)


def test_generate_in_process_with_no_server(tmp_path: Path) -> None:
    picture = tmp_path / "hero.png"
    Image.new("RGB", (320, 400), (200, 60, 60)).save(picture)
    done = run(["generate", "character1 waves and says: 'hello'", "-r", str(picture), "--size", "1280*720",
                "--duration", "2", "--shot", "single", "--seed", "7", "-o", "out.mp4"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "running in this process" in done.stderr and "saved" in done.stdout
    with av.open(str(tmp_path / "out.mp4")) as c:
        video = c.streams.video[0]
        assert (video.width, video.height) == (1280, 720)
        assert sum(1 for _ in c.decode(video=0)) == 60
        assert c.streams.audio  # the line is spoken


def test_generate_status_list_against_a_server(server: LiveServer, tmp_path: Path) -> None:
    opts = ["--server", server.url, "--key", server.key]
    done = run(["generate", "character1 steps=5 step_ms=20", "-r", ref_url("a.png"), "-o", "v.mp4", "--json", *opts], tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["output"]["task_status"] == "SUCCEEDED" and Path(result["file"]).exists()
    task_id = result["output"]["task_id"]

    shown = run(["status", task_id, "--json", *opts], tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["output"]["task_status"] == "SUCCEEDED"
    human = run(["status", task_id, *opts], tmp_path)
    assert "SUCCEEDED" in human.stdout and "/v1/results/" in human.stdout

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
