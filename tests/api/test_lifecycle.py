"""A task's life as clients see it: states, times, usage, failures, owners."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone, UTC

from sqlalchemy import select

from ref2video.store.models import Task
from tests.live import LiveServer

TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")


def test_a_task_runs_to_success_with_usage_and_provider_times(server: LiveServer) -> None:
    task_id = server.create(prompt="character1 steps=4 input_s=7.2", duration=10, audio=False)
    body = server.wait(task_id)
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", out
    for name in ("submit_time", "scheduled_time", "end_time"):
        assert TIME.match(out[name]), out[name]
    assert out["submit_time"] <= out["scheduled_time"] <= out["end_time"]
    assert out["orig_prompt"] == "character1 steps=4 input_s=7.2"
    assert out["progress"] == 100 and out["engine"] == "scripted"
    assert out["video_url"].startswith(server.results_url)
    # Reference-video seconds are billed whole and capped at 5; usage numbers are integers.
    assert body["usage"] == {
        "duration": 15, "input_video_duration": 5, "output_video_duration": 10, "video_count": 1,
        "SR": 720, "size": "1280*720", "audio": False,
    }
    gateway = server.client().get(f"/task/{task_id}").json()
    assert gateway["output"]["task_status"] == "SUCCEEDED" and gateway["usage"] == body["usage"]


def test_progress_is_reported_while_running(server: LiveServer) -> None:
    task_id = server.create(prompt="steps=20 step_ms=100")
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = server.get(task_id)["output"]
        if out["task_status"] == "RUNNING":
            seen.add(out["progress"])
        if out["task_status"] == "SUCCEEDED":
            break
        time.sleep(0.05)
    assert len([p for p in seen if 0 < p < 100]) >= 2, seen
    assert out["task_status"] == "SUCCEEDED"


def test_an_engine_failure_fails_the_task_with_its_code(server: LiveServer) -> None:
    out = server.wait(server.create(prompt="fail=InvalidParameter"))["output"]
    assert out["task_status"] == "FAILED"
    assert out["code"] == "InvalidParameter" and "told to fail" in out["message"]
    assert "video_url" not in out


def test_an_engine_crash_fails_cleanly_without_a_stack_trace(server: LiveServer) -> None:
    out = server.wait(server.create(prompt="crash"))["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InternalError"
    assert "ZeroDivisionError" in out["message"] and "Traceback" not in out["message"]


def test_a_retryable_failure_is_retried_and_then_succeeds(server: LiveServer) -> None:
    task_id = server.create(prompt="retry=1")
    assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    from ref2video.store.models import Task
    from sqlalchemy import select

    with server.service.db.connect() as conn:
        assert conn.execute(select(Task.attempt).where(Task.id == task_id)).scalar_one() == 2


def test_a_retry_after_a_delay_runs_when_due_not_at_the_next_poll(make_server) -> None:  # type: ignore[no-untyped-def]
    # Nothing announces the end of a backoff: the idle worker must wake for it by itself, not
    # at its fallback poll an hour later (the wait below would give up long before that).
    server = make_server(poll_interval=3600.0)
    task_id = server.create(prompt="retry=1 retry_ms=300")
    assert server.wait(task_id, timeout=60)["output"]["task_status"] == "SUCCEEDED"


def test_retries_stop_at_the_attempt_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(max_attempts=2)
    out = server.wait(server.create(prompt="retry=5"))["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "Throttling"
    assert "gave up after 2 attempts" in out["message"]


def test_another_owner_sees_unknown_and_cannot_cancel(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    task_id = server.create()
    stranger = server.new_key(owner="someone-else")
    colleague = server.new_key(owner="default")
    assert server.get(task_id, key=stranger)["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    assert server.client(stranger).get(f"/task/{task_id}").json()["output"]["task_status"] == "UNKNOWN"
    r = server.client(stranger).post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 400 and r.json()["code"] == "UnsupportedOperation"
    assert server.client(stranger).get("/api/v1/tasks").json()["total"] == 0
    # The same owner's other key sees it.
    assert server.get(task_id, key=colleague)["output"]["task_status"] == "PENDING"
    assert server.get(task_id)["output"]["task_status"] == "PENDING"


def test_unknown_ids_answer_unknown(server: LiveServer) -> None:
    for task_id in ("00000000-0000-0000-0000-000000000000", "nope", "x" * 500):
        r = server.client().get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200
        assert r.json()["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}


BEIJING = timezone(timedelta(hours=8))


def test_task_times_are_beijing_time_as_the_providers(make_server) -> None:  # type: ignore[no-untyped-def]
    """Independent clients read submit_time, scheduled_time and end_time as UTC+8 (the
    provider's zone, with no offset in the string); read so, each must be the very moment
    stored. The list filters too."""
    server = make_server()
    task_id = server.create()
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "SUCCEEDED", out
    with server.service.db.connect() as conn:
        stored, scheduled, ended = conn.execute(
            select(Task.submitted_at, Task.scheduled_at, Task.ended_at).where(Task.id == task_id)).one()
    for name, at in (("submit_time", stored), ("scheduled_time", scheduled), ("end_time", ended)):
        as_read = datetime.strptime(out[name], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=BEIJING)
        assert int(as_read.timestamp() * 1000) == at, name
    moment = datetime.fromtimestamp(stored / 1000, BEIJING)
    window = {"start_time": (moment - timedelta(seconds=1)).strftime("%Y%m%d%H%M%S"),
              "end_time": (moment + timedelta(seconds=1)).strftime("%Y%m%d%H%M%S")}
    listed = server.client().get("/api/v1/tasks", params=window).json()
    assert [item["task_id"] for item in listed["data"]] == [task_id]


def test_the_zone_is_a_setting(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0, timezone="UTC")
    task_id = server.create()
    with server.service.db.connect() as conn:
        stored = conn.execute(select(Task.submitted_at).where(Task.id == task_id)).scalar_one()
    submit = server.get(task_id)["output"]["submit_time"]
    as_read = datetime.strptime(submit, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert int(as_read.timestamp() * 1000) == stored
