"""SIGKILL the relaying process between submit and record: the provider made the task, our
table never heard of its id. The restarted relay must adopt it, not pay for a second one, and
(billing on) the owner is charged once for each task the provider made and nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from ref2video.app import accounts
from ref2video.app.ledger import to_micro
from ref2video.store.db import make_engine
from tests.live import free_port, make_body
from tests.relay.proxy import FaultProxy, Rule
from tests.relay.relays import RELAYED, provider_tasks, start_provider

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow

CREDIT = Decimal("100")


def client_get(url: str, key: str, task_id: str) -> Any:
    return httpx.get(f"{url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()


def test_a_crash_between_submit_and_record_is_adopted_after_restart(tmp_path: Path, database_url: str) -> None:
    provider = start_provider(tmp_path)
    proxy = FaultProxy(provider.url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(tmp_path / "relay", database_url, port=port, lease_seconds=1.5, reap_interval=0.2,
                  poll_interval=0.5, models=json.dumps(RELAYED), dashscope_base_url=f"{proxy.url}/api/v1",
                  dashscope_api_keys=json.dumps([provider.key]), dashscope_timeout=3, billing="true")
    log = tmp_path / "relay.log"
    procs: list[subprocess.Popen] = []
    killed = []

    def kill_relay() -> None:  # the provider has answered; the relay will never hear it
        os.killpg(procs[0].pid, signal.SIGKILL)
        killed.append(time.monotonic())

    proxy.add(Rule("pass", "POST", "/video-synthesis", times=1, after_forward=kill_relay))
    try:
        # The three tasks are made by an API-only process first, so the relay's kill cannot
        # land in the middle of the creates; then the relaying process starts on them.
        api_only = spawn(["serve"], {**env, "REF2VIDEO_WORKERS": "0"}, log)
        wait_healthy(url, api_only)
        db = make_engine(database_url)
        accounts.create(db, "default", credit=to_micro(CREDIT), tz=ZoneInfo("Asia/Shanghai"))
        key = (tmp_path / "relay" / "first-api-key.txt").read_text().strip()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        ids = [client.post("/task/bailian/ref2video", json=make_body(f"character1 bows {i} steps=3 step_ms=30"))
               .json()["output"]["task_id"] for i in range(3)]
        client.close()
        stop(api_only)
        procs.append(spawn(["serve"], env, log))  # killed once the provider answers its first submit
        deadline = time.monotonic() + 20
        while not killed or procs[0].poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Made upstream before the kill, answers never recorded: the one the proxy held back, and
        # any other submit already in flight at that moment (a loaded machine may send one).
        lost_answers = [task.spec["prompt"] for task in provider_tasks(provider)]
        assert lost_answers

        procs.append(spawn(["serve"], env, log))
        wait_healthy(url, procs[1])
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        deadline = time.monotonic() + 90
        while True:
            outs = [client.get(f"/api/v1/tasks/{i}").json()["output"] for i in ids]
            if all(o["task_status"] in ("SUCCEEDED", "FAILED") for o in outs):
                break
            assert time.monotonic() < deadline, (outs, log.read_text()[-3000:])
            time.sleep(0.2)
        client.close()
        made = [task.spec["prompt"] for task in provider_tasks(provider)]
        assert len(made) == len(set(made)), made  # none twice
        by_prompt = {o.get("orig_prompt"): o for o in outs}
        for lost in lost_answers:
            assert by_prompt[lost]["task_status"] == "SUCCEEDED"  # adopted after the restart
        for out in outs:  # the others were submitted after the restart, or cleanly failed
            assert out["task_status"] == "SUCCEEDED" or out["code"] == "InternalError.SubmitUnconfirmed", out
        assert sum(o["task_status"] == "SUCCEEDED" for o in outs) == len(made)
        # The books: each task held once and released once; charged only what the provider made.
        bodies = [client_get(url, key, i) for i in ids]
        charged = sum(Decimal(b["usage"]["cost"]) for b in bodies if b["output"]["task_status"] == "SUCCEEDED")
        assert charged == len(made) * Decimal("1.5")  # 5 s of wan2.6-r2v-flash at 720P with sound
        assert accounts.show(db, "default", tz=ZoneInfo("Asia/Shanghai")).balance == to_micro(CREDIT - charged)
        assert accounts.show(db, "default", tz=ZoneInfo("Asia/Shanghai")).held == 0
        assert not accounts.audit(db)
        db.dispose()
    finally:
        for proc in procs:
            stop(proc)
        proxy.close()
        provider.stop()
