"""What follows a change of a task's state, in the transaction of that change: the ledger
settles the task's hold, the outbox queues its webhooks. Called by `transitions` alone,
always after its own write, so the transaction already holds SQLite's write lock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from ..protocol import Status
from . import ledger, observe, outbox

__all__ = ["after", "requeued", "expired"]

_ENDS = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)


def after(conn: Connection, task_ids: Sequence[str], status: Status, *, usage: Mapping[str, Any] | None = None,
          source: Status | None = None, engine: str | None = None, attempt: int | None = None) -> None:
    """`task_ids` have just moved to `status` (RUNNING, or an end; `usage` with SUCCEEDED) from
    `source` (default: PENDING for RUNNING, else RUNNING), by `engine` in `attempt` when known."""
    if not task_ids:
        return
    if source is None:
        source = Status.PENDING if status is Status.RUNNING else Status.RUNNING
    observe.moved(conn, task_ids, status, source=source, engine=engine, attempt=attempt)  # memory only
    if status in _ENDS:
        ledger.settle(conn, task_ids, status, usage)
    outbox.enqueue(conn, task_ids, status)


def requeued(conn: Connection, task_ids: Sequence[str]) -> None:
    """`task_ids` went back from RUNNING to the queue in bulk (a lapsed lease reaped, a process
    handing back what it held): counted and logged, nothing to settle or tell the owner."""
    observe.moved(conn, task_ids, Status.PENDING, source=Status.RUNNING)


def expired(conn: Connection, task_ids: Sequence[str]) -> None:
    """`task_ids` have just been removed at the end of retention, whatever their state."""
    if task_ids:
        ledger.settle(conn, task_ids, None)
