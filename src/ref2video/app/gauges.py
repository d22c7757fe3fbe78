"""The task table's figures, read when `/metrics` is scraped: tasks by state and model, the
depth of the queue and the age of its oldest PENDING task.

They are read from the database rather than kept as counters in memory, because many
processes change the table (API servers create and cancel, workers claim and end, the reaper
and the retention sweep move tasks of dead processes), and only the table knows the sum; a
process that crashed leaves no counter to subtract. Three small queries (a GROUP BY over the
table, which retention keeps bounded, and two that the claim and queue indexes answer) are
remembered for `ttl` seconds, so frequent or concurrent scrapes cost one read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

from ..protocol import Status
from ..store.db import now_ms
from ..store.models import Task

__all__ = ["TaskGauges"]


class TaskGauges:
    """A prometheus_client collector over the task table of `db`."""

    def __init__(self, db: Engine, *, ttl: float = 2.0) -> None:
        self.db = db
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._figures: tuple[list[tuple[str, str, int]], int, float | None] | None = None

    def _read(self) -> tuple[list[tuple[str, str, int]], int, float | None]:
        now = now_ms()
        with self.db.connect() as conn:
            counts = conn.execute(select(Task.status, Task.model, func.count()).group_by(Task.status, Task.model)).all()
            ready = conn.execute(
                select(func.count()).where(Task.status == Status.PENDING.value, Task.run_after <= now)
            ).scalar_one()
            oldest = conn.execute(
                select(func.min(Task.submitted_at)).where(Task.status == Status.PENDING.value)
            ).scalar_one()
        age = None if oldest is None else max(0.0, (now - int(oldest)) / 1000)
        return [(str(s), str(m), int(n)) for s, m, n in counts], int(ready), age

    def figures(self) -> tuple[list[tuple[str, str, int]], int, float | None] | None:
        """(status, model, count) rows, ready PENDING tasks, age of the oldest PENDING task; None
        when the database does not answer (the scrape then shows `ref2video_database_up 0`)."""
        with self._lock:
            if self._figures is None or time.monotonic() - self._at >= self.ttl:
                try:
                    self._figures = self._read()
                except DBAPIError:
                    self._figures = None
                self._at = time.monotonic()
            return self._figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        yield GaugeMetricFamily("ref2video_database_up", "Whether the task table answered the last scrape",
                                value=0 if figures is None else 1)
        if figures is None:
            return
        counts, ready, age = figures
        tasks = GaugeMetricFamily("ref2video_tasks", "Tasks kept (within retention), by state and model",
                                  labels=["status", "model"])
        seen = {(status, model) for status, model, _ in counts}
        for status, model, count in counts:
            tasks.add_metric([status, model], count)
        for model in {model for _, model in seen}:  # states with no task show 0, not nothing
            for status in Status:
                if status is not Status.UNKNOWN and (status.value, model) not in seen:
                    tasks.add_metric([status.value, model], 0)
        yield tasks
        yield GaugeMetricFamily("ref2video_queue_depth", "PENDING tasks ready to be claimed now", value=ready)
        yield GaugeMetricFamily("ref2video_queue_oldest_pending_age_seconds",
                                "Seconds the oldest PENDING task has waited (0 when none waits)", value=age or 0.0)
