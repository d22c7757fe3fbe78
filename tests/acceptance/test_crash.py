"""SIGKILL the server mid-task: after a restart every accepted task still finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ref2video.store.db import make_engine
from ref2video.store.models import Task

from tests.live import free_port, make_body

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_sigkill_mid_task_loses_nothing(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(tmp_path / "data", database_url, port=port, workers=2, lease_seconds=1.5, reap_interval=0.2)
    log = tmp_path / "server.log"
    proc = spawn(["serve"], env, log)
    try:
        wait_healthy(url, proc)
        key = (tmp_path / "data" / "first-api-key.txt").read_text().strip()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
        body = make_body(prompt="steps=30 step_ms=100")
        ids = [client.post("/task/bailian/ref2video", json=body).json()["output"]["task_id"] for _ in range(4)]
        deadline = time.monotonic() + 20
        while sum(client.get(f"/task/{i}").json()["output"]["task_status"] == "RUNNING" for i in ids) < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        stop(proc, signal.SIGKILL)
        client.close()

        proc = spawn(["serve"], env, log)
        wait_healthy(url, proc)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
        deadline = time.monotonic() + 60
        while True:
            states = [client.get(f"/task/{i}").json()["output"]["task_status"] for i in ids]
            if all(s == "SUCCEEDED" for s in states):
                break
            assert time.monotonic() < deadline and "FAILED" not in states, (states, log.read_text())
            time.sleep(0.1)
        client.close()
    finally:
        stop(proc)
    db = make_engine(database_url)
    with db.connect() as conn:
        attempts = sorted(conn.execute(select(Task.attempt).where(Task.id.in_(ids))).scalars())
    db.dispose()
    assert attempts == [1, 1, 2, 2]  # the two that were running when killed ran again
