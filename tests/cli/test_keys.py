"""`ref2video keys` on the real command line, against the database a live server uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.acceptance.procs import env_for
from tests.live import LiveServer
from tests.test_spec import SEED_BODY


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ref2video", *args], env=env, capture_output=True, text=True,
                          timeout=60)


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
    r = httpx.post(f"{server.url}/task/bailian/ref2video", json=SEED_BODY, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "InvalidApiKey"

    again = cli(["keys", "revoke", key_id], env)
    assert again.returncode == 1 and "no live key" in again.stderr


def test_a_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", workers="many")
    done = cli(["keys", "list"], env)
    assert done.returncode == 2 and "invalid configuration" in done.stderr and "Traceback" not in done.stderr
