"""Several worker processes claiming from one PostgreSQL table: nothing runs twice or is lost."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ref2video.spec import TaskSpec
from ref2video.app import tasks
from ref2video.store.db import make_engine, migrate
from ref2video.store.keys import Principal
from ref2video.store.models import Task
from ref2video.queue.wakeup import Wakeup

from tests.live import ref_url

from .procs import env_for, spawn, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_worker_processes_share_one_table_without_double_runs(tmp_path: Path, pg_url: str) -> None:
    db = make_engine(pg_url)
    migrate(db)
    runs = tmp_path / "runs"
    runs.mkdir()
    env = env_for(tmp_path / "data", pg_url, workers=2, poll_interval=60, lease_seconds=5)
    env["R2V_TEST_RUNS"] = str(runs)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [spawn(["worker"], env, log) for log in logs]
    try:
        # Let them start and go idle: from then on only NOTIFY can wake them in time.
        deadline = time.monotonic() + 30
        while not all(log.exists() and "slot(s)" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.05)
        time.sleep(0.3)
        wakeup = Wakeup(db)
        spec = TaskSpec(model="wan2.6-r2v-flash", prompt="steps=2 step_ms=20", reference_urls=(ref_url("a.png"),))
        ids = [tasks.create(db, spec, Principal("k", "o"), retention_ms=86_400_000, on_insert=wakeup.notify_in).id
               for _ in range(30)]
        deadline = time.monotonic() + 60
        while True:
            with db.connect() as conn:
                rows = conn.execute(select(Task.status, Task.attempt).where(Task.id.in_(ids))).all()
            if all(r.status == "SUCCEEDED" for r in rows):
                break
            counts = collections.Counter(r.status for r in rows)
            assert time.monotonic() < deadline and not counts["FAILED"], counts
            assert all(w.poll() is None for w in workers)
            time.sleep(0.1)
    finally:
        for w in workers:
            stop(w)
        db.dispose()
    assert all(r.attempt == 1 for r in rows)
    per_task = collections.Counter(p.name.split(".")[0] for p in runs.iterdir())
    assert sorted(per_task) == sorted(ids)
    assert set(per_task.values()) == {1}
