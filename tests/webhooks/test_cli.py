"""`ref2video webhooks` on the real command line, against the database a live server uses:
the secret it prints verifies what the server sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ref2video.app import webhooks

from tests.acceptance.procs import env_for
from tests.live import LiveServer

from .conftest import FAST, all_delivered
from .receiver import Receiver


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ref2video", "webhooks", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_add_list_secret_log_remove(make_server, receiver: Receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(**FAST)
    env = env_for(tmp_path / "cli", server.service.settings.database_url)
    made = cli(["add", receiver.url("/cli"), "--owner", "default", "-e", "task.succeeded", "--json"], env)
    assert made.returncode == 0, made.stderr
    endpoint = json.loads(made.stdout)
    assert endpoint["events"] == ["task.succeeded"] and endpoint["secret"].startswith("whsec_")
    receiver.url("/cli", endpoint["secret"])

    again = cli(["secret", endpoint["id"]], env)
    assert again.returncode == 0 and again.stdout.strip() == endpoint["secret"]
    owner_secret = cli(["secret"], env).stdout.strip()
    assert owner_secret.startswith("whsec_") and owner_secret != endpoint["secret"]
    assert webhooks.secret(server.service.db, "default") == owner_secret  # made once, then kept

    listed = cli(["list"], env)
    assert listed.returncode == 0
    assert listed.stdout.split("\n")[0].split("\t")[:3] == [endpoint["id"], receiver.url("/cli"), "task.succeeded"]
    assert endpoint["secret"] not in listed.stdout

    task_id = server.create()
    server.wait(task_id)
    receiver.wait_for(all_delivered(server.service.db, 1), "the delivery")
    receiver.assert_all_verified()
    logged = json.loads(cli(["log", "--json"], env).stdout)
    assert [(d["event"], d["task_id"], d["state"], d["attempts"]) for d in logged] == [
        ("task.succeeded", task_id, "delivered", 1)]
    by_prefix = json.loads(cli(["log", "--task", task_id[:8], "--json"], env).stdout)
    assert [d["task_id"] for d in by_prefix] == [task_id]  # a prefix, as the task commands take
    assert json.loads(cli(["log", "--task", "0000_%", "--json"], env).stdout) == []  # no LIKE wildcards
    short = cli(["log", "--task", task_id[:3]], env)
    assert short.returncode == 2 and "4 characters or more" in short.stderr

    refused = cli(["add", "ftp://example.com/"], env)
    assert refused.returncode == 2 and "http:// or https://" in refused.stderr
    assert cli(["remove", endpoint["id"]], env).returncode == 0
    assert webhooks.list(server.service.db, "default") == []
