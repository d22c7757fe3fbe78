"""What a transaction notes is published only once it commits (app/observe.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ref2video.app import observe
from ref2video.logs import JsonFormatter, TextFormatter, ContextFilter, REQUEST_ID, task_context
from ref2video.protocol import Status
from ref2video.store.db import make_engine, migrate


def canceled_count() -> float:
    return REGISTRY.get_sample_value("ref2video_task_transitions_total", {"to": "CANCELED"}) or 0.0


def test_only_committed_changes_are_published(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(db)
    caplog.set_level(logging.INFO, "ref2video.tasks")
    start = canceled_count()
    with pytest.raises(RuntimeError), observe.begin(db) as conn:
        observe.moved(conn, ["rolled-back"], Status.CANCELED, source=Status.PENDING)
        raise RuntimeError("rolled back")
    with db.begin() as conn:  # a plain transaction's notes are dropped, never published by the next
        observe.moved(conn, ["plain"], Status.CANCELED, source=Status.PENDING)
    with observe.begin(db) as conn:
        pass
    assert canceled_count() == start
    with observe.begin(db) as conn:
        observe.moved(conn, ["committed"], Status.CANCELED, source=Status.PENDING)
        assert canceled_count() == start  # not before the commit
    assert canceled_count() == start + 1
    moved = [r for r in caplog.records if r.name == "ref2video.tasks"]
    assert [getattr(r, "task_id", None) for r in moved] == ["committed"]
    assert "PENDING -> CANCELED" in moved[0].getMessage()
    db.dispose()


def test_lines_carry_the_request_and_task_ids() -> None:
    import json

    record = logging.LogRecord("ref2video.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    token = REQUEST_ID.set("req-1")
    try:
        with task_context("task-1"):
            ContextFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello there" and line["request_id"] == "req-1" and line["task_id"] == "task-1"
    assert TextFormatter().format(record).endswith("hello there [request_id=req-1 task_id=task-1]")
