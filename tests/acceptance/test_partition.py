"""A network partition between hosts, simulated with network namespaces: an API host and two
worker hosts, each in a namespace of its own, reach PostgreSQL and the S3 server (in the root
namespace) over veth links. One worker host is cut off in the middle of a task: its lease lapses,
the other host finishes the task, and when the link comes back the cut-off worker records
nothing (its lease renewal is a compare-and-set on a token that is no longer the task's). Nothing
is lost or finished twice: one success, the expected attempts, one result object.

Needs root and `ip` (iproute2); skipped otherwise. CI (root) runs it. Namespaces and links are
removed on the way out whatever happens. Waits are on conditions, with generous deadlines.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ref2video.app import keys
from ref2video.store.db import make_engine, migrate
from ref2video.store.models import Task
from tests.api.test_uploads import png_bytes
from tests.live import free_port, make_body
from tests.s3_server import S3Server
from tests.tcp_proxy import TcpProxy

from .procs import env_for, stop, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DEADLINE = 180.0  # seconds any one condition may take to come true; generous, never a measure


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Hosts:
    """Namespaces `<tag>-<name>`, each linked to the root namespace by a veth pair on
    10.<net>.<i>.0/24: the root side is .1, the host's side .2."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.net = 100 + secrets.randbelow(150)
        self.names: list[str] = []

    def add(self, name: str) -> tuple[str, str]:
        """A host: (its namespace, the root namespace's address as it sees it)."""
        i = len(self.names)
        ns, outer, inner = f"r2v{self.tag}-{name}", f"r2v{self.tag}h{i}", f"r2v{self.tag}n{i}"
        _ip("netns", "add", ns)
        self.names.append(ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"10.{self.net}.{i}.1/24", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"10.{self.net}.{i}.2/24", "dev", inner)
        _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ns, f"10.{self.net}.{i}.1"

    def address(self, ns: str) -> str:
        return f"10.{self.net}.{self.names.index(ns)}.2"

    def link(self, ns: str, up: bool) -> None:
        _ip("link", "set", f"r2v{self.tag}h{self.names.index(ns)}", "up" if up else "down")

    def remove(self) -> None:
        for ns in self.names:
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("link", "del", f"r2v{self.tag}h{self.names.index(ns)}", check=False)
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    made = Hosts()
    try:
        probe = f"r2v{made.tag}-probe"
        result = _ip("netns", "add", probe, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot make a network namespace: {result.stderr.strip()}")
        _ip("netns", "del", probe, check=False)
        yield made
    finally:
        made.remove()


def spawn_in(ns: str, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """`python -m ref2video ARGS` inside namespace `ns` (`ip netns exec` execs it: same pid)."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "ref2video", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def wait_for(what: str, condition: Callable[[], Any], procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        if value := condition():
            return value
        assert all(p.poll() is None for p in procs), f"a process exited while waiting for {what}"
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.1)


def test_a_worker_cut_off_mid_task_loses_it_and_records_nothing(hosts: Hosts, tmp_path: Path, pg_url: str) -> None:
    db = make_engine(pg_url)
    migrate(db)
    key, _ = keys.create_key(db, owner="default", name="partition")
    s3 = S3Server.start(bind="0.0.0.0")
    pg_host, pg_port = pg_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    pg = TcpProxy(pg_host, int(pg_port), bind="0.0.0.0")
    bucket = s3.bucket()
    procs: list[subprocess.Popen[bytes]] = []

    def env(ns_gateway: str, data_dir: Path, **settings: object) -> dict[str, str]:
        database = pg_url.replace(f"{pg_host}:{pg_port}", f"{ns_gateway}:{pg.port}")
        return env_for(data_dir, database, **s3.settings(bucket, url=f"http://{ns_gateway}:{s3.port}"), **settings)

    try:
        api_ns, api_gw = hosts.add("api")
        w1_ns, w1_gw = hosts.add("w1")
        w2_ns, w2_gw = hosts.add("w2")
        port = free_port()
        api = spawn_in(api_ns, ["serve", "--workers", "0", "--host", "0.0.0.0", "--port", str(port)],
                       env(api_gw, tmp_path / "api"), tmp_path / "api.log", tmp_path / "api-cwd")
        procs.append(api)
        url = f"http://{hosts.address(api_ns)}:{port}"
        wait_healthy(url, api, timeout=DEADLINE)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        # The reference is an upload: in the bucket, which both worker hosts reach (nothing of
        # the test process's loopback is reachable from a namespace).
        r = client.post("/api/v1/uploads", files={"file": ("hero.png", png_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        reference = r.json()["output"]["url"]

        worker_settings = {"workers": 1, "lease_seconds": 3, "reap_interval": 0.5, "log_level": "info",
                           "max_attempts": 3}
        # `gate=gate` waits for ./gate, relative to each worker's own folder: the test opens
        # each worker's gate on its own.
        w1_cwd, w2_cwd = tmp_path / "w1-cwd", tmp_path / "w2-cwd"
        w1_runs = tmp_path / "w1-runs"  # the scripted engine marks each run it starts here
        w1_runs.mkdir()
        w1_env = {**env(w1_gw, tmp_path / "w1", **worker_settings), "R2V_TEST_RUNS": str(w1_runs)}
        w1 = spawn_in(w1_ns, ["worker"], w1_env, tmp_path / "w1.log", w1_cwd)
        procs.append(w1)
        r = client.post("/task/bailian/ref2video",
                        json=make_body(prompt="character1 waves gate=gate steps=1", urls=[reference]))
        assert r.status_code == 200, r.text
        task_id = r.json()["output"]["task_id"]

        def row() -> Any:
            with db.connect() as conn:
                return conn.execute(select(Task.status, Task.attempt, Task.lease_token, Task.result_key)
                                    .where(Task.id == task_id)).one()

        first = wait_for("worker 1 to claim the task", lambda: (got := row()).status == "RUNNING" and got, procs)
        assert first.attempt == 1
        # Its references are fetched (from the bucket) and the engine runs, waiting at its gate.
        wait_for("worker 1's engine to start", lambda: any(w1_runs.iterdir()), procs)
        w2 = spawn_in(w2_ns, ["worker"], env(w2_gw, tmp_path / "w2", **worker_settings), tmp_path / "w2.log", w2_cwd)
        procs.append(w2)

        hosts.link(w1_ns, up=False)  # worker 1's host is cut off, its task in hand
        second = wait_for("the lapsed lease to pass to worker 2",
                          lambda: (got := row()).status == "RUNNING" and got.attempt == 2 and got, procs)
        assert second.lease_token != first.lease_token
        (w2_cwd / "gate").touch()
        done = wait_for("worker 2 to finish", lambda: (got := row()).status == "SUCCEEDED" and got, procs)
        assert done.attempt == 2 and done.result_key.startswith(f"{task_id}-{second.lease_token[:8]}")

        hosts.link(w1_ns, up=True)  # the link returns: worker 1's writes are compare-and-sets that miss
        # Its lease keeper's renewal, a compare-and-set on its token, misses: the engine is
        # stopped and nothing is recorded.
        wait_for("worker 1 to see it lost the task",
                 lambda: "canceled -> not recorded (claim lost)" in (tmp_path / "w1.log").read_text(), procs)
        assert "recording the outcome" not in (tmp_path / "w1.log").read_text()

        (w1_cwd / "gate").touch()  # too late: the engine was stopped
        time.sleep(1)  # (not a bound: only a chance for a wrong write to show)
        final = row()
        assert (final.status, final.attempt, final.result_key) == ("SUCCEEDED", 2, done.result_key)
        objects = s3.client().list_objects_v2(Bucket=bucket, Prefix="results/").get("Contents", [])
        assert [item["Key"] for item in objects] == [f"results/{done.result_key}"]
        out = client.get(f"/api/v1/tasks/{task_id}").json()["output"]
        assert out["task_status"] == "SUCCEEDED"
        video = httpx.get(out["video_url"], timeout=60)  # presigned, at the API host's way to the bucket
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        for data_dir in (tmp_path / "w1", tmp_path / "w2"):  # scratch is cleaned on both hosts
            scratch = data_dir / "scratch"
            assert not [p for p in scratch.iterdir() if p.name != "s3"] if scratch.exists() else True
        client.close()
    finally:
        for proc in procs:
            stop(proc)
        pg.close()
        s3.stop()
        db.dispose()
