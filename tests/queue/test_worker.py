"""Workers in a live server: immediate pick-up, graceful shutdown, crash recovery in-process."""

from __future__ import annotations

from sqlalchemy import select

from ref2video.store.models import Task
from tests.live import LiveServer


def test_an_idle_worker_takes_new_work_at_once(make_server) -> None:  # type: ignore[no-untyped-def]
    # poll_interval is an hour: only the create's wake-up can start these tasks at all.
    server: LiveServer = make_server(poll_interval=3600.0)
    for _ in range(3):
        assert server.wait(server.create(prompt="steps=1 step_ms=1"))["output"]["task_status"] == "SUCCEEDED"


def test_several_workers_run_tasks_side_by_side(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(workers=3)
    gate = tmp_path / "open"
    ids = [server.create(prompt=f"gate={gate}") for _ in range(3)]
    for task_id in ids:  # all three hold a worker at once; none can end before the gate opens
        server.wait(task_id, states=("RUNNING",))
    assert server.service.running == 3
    gate.touch()
    for task_id in ids:
        assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"


def test_shutdown_hands_unfinished_tasks_back_to_the_queue(make_server) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(shutdown_grace=0.2)
    task_id = server.create(prompt="steps=400 step_ms=50")
    server.wait(task_id, states=("RUNNING",))
    server.stop()
    with server.service.db.connect() as conn:
        row = conn.execute(select(Task.status, Task.attempt).where(Task.id == task_id)).one()
    assert tuple(row) == ("PENDING", 0)


def test_a_task_whose_worker_vanished_runs_again_and_finishes(make_server) -> None:  # type: ignore[no-untyped-def]
    """A claim nobody renews (a dead worker) lapses; the reaper gives it to a live one."""
    server: LiveServer = make_server(workers=0)
    task_id = server.create(prompt="steps=2")
    dead = server.service.manager.claim(["wan2.6-r2v-flash"])  # claimed, then never renewed
    assert dead is not None
    live = make_server(data_dir=server.service.settings.data_dir, lease_seconds=1.0)
    body = live.wait(task_id, timeout=20)
    assert body["output"]["task_status"] == "SUCCEEDED"
    with live.service.db.connect() as conn:
        assert conn.execute(select(Task.attempt).where(Task.id == task_id)).scalar_one() == 2
