"""What follows a change of a task's state, in the transaction of that change: the ledger
settles the task's hold, the outbox queues its webhooks. Called by `transitions` alone."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from ..protocol import Status
from . import ledger, outbox

__all__ = ["after", "expired"]


def after(conn: Connection, task_ids: Sequence[str], status: Status) -> None:
    """`task_ids` have just moved to `status` (RUNNING, or an end)."""
    if not task_ids:
        return
    if status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELED):
        ledger.settle(conn, task_ids)
    outbox.enqueue(conn, task_ids, status)


def expired(conn: Connection, task_ids: Sequence[str]) -> None:
    """`task_ids` are about to be removed at the end of retention, whatever their state."""
    if task_ids:
        ledger.expiring(conn, task_ids)
        ledger.settle(conn, task_ids)
