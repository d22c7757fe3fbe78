"""`ref2video worker --models a,b` as an operator runs it: the process claims the tasks of
those models only, and says so. (The setting behind it, `worker_models`, is tested in-process
in tests/queue/test_capacity.py; this is the flag.)"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live import LiveServer, make_body, media_body

from .procs import env_for, spawn, stop

pytestmark = pytest.mark.slow


def test_a_worker_given_models_claims_only_those(tmp_path: Path, database_url: str,
                                                 make_server: Callable[..., LiveServer]) -> None:
    api = make_server(workers=0)  # the API only: nothing runs here
    env = env_for(tmp_path / "worker", database_url, poll_interval=0.2)
    log = tmp_path / "worker.log"
    other = api.create(make_body("character1 waves steps=1", model="wan2.6-r2v"))  # older, so first in line
    worker: subprocess.Popen | None = None
    try:
        worker = spawn(["worker", "--models", "wan2.6-r2v-flash,wan2.7-r2v", "--workers", "1"], env, log)
        mine = [api.create(make_body("character1 waves steps=1", model="wan2.6-r2v-flash")),
                api.create(media_body("Image 1 waves steps=1"))]  # wan2.7-r2v
        for task_id in mine:
            done = api.wait(task_id, timeout=60)
            assert done["output"]["task_status"] == "SUCCEEDED", log.read_text()
        assert api.get(other)["output"]["task_status"] == "PENDING"
        assert "for wan2.6-r2v-flash, wan2.7-r2v" in log.read_text()
    finally:
        if worker is not None:
            stop(worker)
