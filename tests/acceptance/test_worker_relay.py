"""The README's scale-out recipe with relayed models: `serve --workers 0` answers the API, a
separate `ref2video worker` process runs the relay. Before, only `serve` started the relay,
and relayed tasks stayed PENDING for ever."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.live import free_port, make_body
from tests.relay.relays import RELAYED, QUICK, provider_tasks, start_provider

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_a_worker_process_runs_the_relay(tmp_path: Path, database_url: str) -> None:
    provider = start_provider(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(tmp_path / "data", database_url, port=port, poll_interval=0.5, models=json.dumps(RELAYED),
                  dashscope_base_url=f"{provider.url}/api/v1", dashscope_api_keys=provider.key,
                  dashscope_timeout=3)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(spawn(["serve", "--workers", "0"], env, tmp_path / "api.log"))
        wait_healthy(url, procs[0])
        procs.append(spawn(["worker"], env, tmp_path / "worker.log"))
        key = (tmp_path / "data" / "first-api-key.txt").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            task_id = client.post("/task/bailian/ref2video", json=make_body(QUICK)).json()["output"]["task_id"]
            deadline = time.monotonic() + 60
            while (out := client.get(f"/api/v1/tasks/{task_id}").json()["output"])["task_status"] != "SUCCEEDED":
                assert out["task_status"] in ("PENDING", "RUNNING"), out
                assert time.monotonic() < deadline and procs[1].poll() is None, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
        assert out["engine"] == "dashscope" and len(provider_tasks(provider)) == 1
        assert "the dashscope engine for wan2.6-r2v, wan2.6-r2v-flash" in (tmp_path / "worker.log").read_text()
    finally:
        for proc in procs:
            stop(proc)
        provider.stop()
