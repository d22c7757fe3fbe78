"""`ref2video keys` on the real command line, against the database a live server uses."""

from __future__ import annotations

import time
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.acceptance.procs import env_for
from tests.cli.procs import child_env
from tests.limits.conftest import FakeClock, assert_throttled
from tests.live import LiveServer
from tests.test_spec import SEED_BODY


def cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ref2video", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_create_list_revoke_round_trip(server: LiveServer, tmp_path: Path) -> None:
    env = env_for(tmp_path / "cli", server.service.settings.database_url)
    made = cli(["keys", "create", "--owner", "acme", "--name", "ci"], env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"r2v-[0-9a-f]{12}-[A-Za-z0-9_-]{43}", key)
    key_id = key.split("-")[1]

    # Only the hash is stored: the secret appears nowhere in the database.
    with server.service.db.connect() as conn:
        dump = "\n".join(str(tuple(r)) for r in conn.exec_driver_sql("SELECT * FROM api_keys"))
    assert key.split("-", 2)[2] not in dump and key_id in dump

    listed = cli(["keys", "list"], env)
    assert listed.returncode == 0 and key_id in listed.stdout and "acme" in listed.stdout
    assert key.split("-", 2)[2] not in listed.stdout

    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{server.url}/task/bailian/ref2video", json=SEED_BODY, headers=headers).status_code == 200
    revoked = cli(["keys", "revoke", key_id], env)
    assert revoked.returncode == 0, revoked.stderr
    # Every process stops taking it once what it remembers of the key is stale (a second).
    deadline = time.monotonic() + 30
    while (r := httpx.post(f"{server.url}/task/bailian/ref2video", json=SEED_BODY, headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key was still taken after 30 s"
        time.sleep(0.05)
    assert r.status_code == 401 and r.json()["code"] == "InvalidApiKey"

    again = cli(["keys", "revoke", key_id], env)
    assert again.returncode == 1 and "no live key" in again.stderr


def test_a_keys_own_rate_limits_are_set_listed_and_applied(make_server: Callable[..., LiveServer],
                                                          tmp_path: Path) -> None:
    """`keys create --query-rate`, `keys limits`, `keys list`; the server applies a change once
    what it remembers of the key is stale (its clock is the test's here, moved by hand)."""
    server = make_server(workers=0, rate_query_per_second=1, rate_query_burst=1)
    clock = FakeClock()
    server.service.auth.clock = server.service.limits.clock = clock
    env = env_for(tmp_path / "cli", server.service.settings.database_url)
    made = cli(["keys", "create", "--owner", "acme", "--query-rate", "0", "--create-rate", "2.5",
                "--create-burst", "4"], env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    key_id = key.split("-")[1]
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
    with client:
        assert all(client.get("/api/v1/tasks").status_code == 200 for _ in range(5))  # no limit for it
        row = next(line for line in cli(["keys", "list"], env).stdout.splitlines() if key_id in line)
        assert "2.5/s, burst 4" in row and "no limit" in row, row

        changed = cli(["keys", "limits", key_id, "--query-rate", "default", "--create-burst", "default"], env)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.splitlines() == [f"key: {key_id}", "owner: acme", "creates: 2.5/s", "queries: default"]
        clock.advance(server.service.auth.ttl)
        assert client.get("/api/v1/tasks").status_code == 200
        assert_throttled(client.get("/api/v1/tasks"), limit=1, words="1 queries a second, 1 at once")

    for args, option in ((["--query-rate", "fast"], "--query-rate"), (["--create-burst", "1.5"], "--create-burst"),
                         (["--create-rate", "-1"], "--create-rate"), (["--query-burst", "nan"], "--query-burst")):
        bad = cli(["keys", "limits", key_id, *args], env)
        assert bad.returncode == 2 and bad.stderr.count(option) == 1 and "Traceback" not in bad.stderr, bad.stderr
        bad = cli(["keys", "create", *args], env)
        assert bad.returncode == 2 and option in bad.stderr, bad.stderr
    missing = cli(["keys", "limits", "nope", "--query-rate", "1"], env)
    assert missing.returncode == 1 and "no live key 'nope'" in missing.stderr


def test_a_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", workers="many")
    done = cli(["keys", "list"], env)
    assert done.returncode == 2 and "invalid configuration" in done.stderr and "Traceback" not in done.stderr


def test_keys_in_another_folder_refuse_to_make_a_database_unless_asked(tmp_path: Path) -> None:
    """Run where there is no database, every command that opens one (`keys`, `accounts`,
    `webhooks`, `worker`) says where it looked and makes nothing."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env(tmp_path)
    del env["REF2VIDEO_DATA_DIR"]  # the default: ./ref2video-data, in the current folder
    database = elsewhere / "ref2video-data" / "ref2video.db"
    for args in (["keys", "list"], ["keys", "create", "--owner", "acme"], ["keys", "revoke", "abc"],
                 ["keys", "limits", "abc", "--create-rate", "5"], ["accounts", "show", "acme"],
                 ["accounts", "create", "acme"], ["webhooks", "list", "--owner", "acme"], ["worker"]):
        refused = cli(args, env, cwd=elsewhere)
        assert refused.returncode == 2, (args, refused.stderr)
        assert f"database: {database}" in refused.stderr and "no such file" in refused.stderr
        for hint in ("--config", "REF2VIDEO_DATA_DIR", "REF2VIDEO_DATABASE_URL", "--init"):
            assert hint in refused.stderr, (args, hint)
        assert "Traceback" not in refused.stderr and refused.stdout == ""
        assert not (elsewhere / "ref2video-data").exists(), args

    made = cli(["keys", "create", "--owner", "acme", "--init"], env, cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    assert f"database: {database}" in made.stderr and database.is_file()
    key_id = made.stdout.strip().splitlines()[-1].split("-")[1]
    listed = cli(["keys", "list"], env, cwd=elsewhere)
    assert listed.returncode == 0 and key_id in listed.stdout and f"database: {database}" in listed.stderr


def test_keys_on_a_postgres_database_without_tables_refuse_and_mask_the_password(pg_url: str, tmp_path: Path) -> None:
    url = pg_url.replace("postgres@", "postgres:hunter2@", 1)
    env = env_for(tmp_path, url)
    refused = cli(["keys", "list"], env)
    assert refused.returncode == 2 and "no ref2video tables" in refused.stderr
    assert "hunter2" not in refused.stderr and f"database: {url.replace('hunter2', '***')}" in refused.stderr
    made = cli(["keys", "create", "--init"], env)
    assert made.returncode == 0, made.stderr
    assert cli(["keys", "list"], env).returncode == 0
