"""The provider's side of relayed tasks: which upstream task a task was sent as, with which
account, when, and its last known state. Statements on the caller's connection; every write
matches the holder's lease token, so a holder whose lease lapsed changes nothing.

The order of writes is what makes "never submit twice" hold: `intend` records that a submit is
about to leave before it is sent; `record` stores the upstream id afterwards. A row with an
intent and no upstream id is an orphan, reconciled through the provider's task list.
"""

from __future__ import annotations

from collections.abc import Sequence
from sqlalchemy import ColumnElement, Connection, and_, func, select, update

from ..protocol import Status
from .db import now_ms
from .models import Task

__all__ = ["intend", "clear_intent", "record", "set_status", "recorded", "siblings", "held_ids",
           "cancel_requests"]


def _holding(token: str) -> ColumnElement[bool]:
    return and_(Task.lease_token == token, Task.status == Status.RUNNING.value)


def _unrecorded(token: str, task_id: str) -> ColumnElement[bool]:
    """The held task `task_id`, while no upstream id is recorded for it."""
    return and_(Task.id == task_id, _holding(token), Task.upstream_id.is_(None))


def intend(conn: Connection, token: str, task_id: str, account: str, engine: str) -> int | None:
    """Record that a submit with `account` is about to leave; the moment, or None when the task
    is no longer held."""
    now = now_ms()
    done = conn.execute(
        update(Task).where(_unrecorded(token, task_id))
        .values(upstream_submit_at=now, upstream_account=account, engine=engine)
    )
    return now if done.rowcount == 1 else None


def clear_intent(conn: Connection, token: str, task_id: str) -> bool:
    """The submit certainly did not reach the provider (refused before acting)."""
    done = conn.execute(
        update(Task).where(_unrecorded(token, task_id)).values(upstream_submit_at=None, upstream_account=None)
    )
    return bool(done.rowcount == 1)


def record(conn: Connection, token: str, task_id: str, upstream_id: str, status: str, *, adopted: bool) -> bool:
    """Store the provider's task id (the unique index refuses a second owner: IntegrityError)."""
    done = conn.execute(
        update(Task).where(_unrecorded(token, task_id))
        .values(upstream_id=upstream_id, upstream_status=status, upstream_adopted=adopted)
    )
    return bool(done.rowcount == 1)


def set_status(conn: Connection, token: str, statuses: dict[str, str]) -> None:
    """Remember the provider's latest state of held tasks."""
    by_status: dict[str, list[str]] = {}
    for task_id, status in statuses.items():
        by_status.setdefault(status, []).append(task_id)
    for status, ids in by_status.items():
        conn.execute(update(Task).where(_holding(token), Task.id.in_(ids)).values(upstream_status=status))


def recorded(conn: Connection, upstream_ids: Sequence[str]) -> set[str]:
    """Which of these upstream tasks already belong to a task of ours."""
    if not upstream_ids:
        return set()
    found = conn.execute(select(Task.upstream_id).where(Task.upstream_id.in_(list(upstream_ids)))).scalars()
    return {upstream_id for upstream_id in found if upstream_id is not None}


def siblings(conn: Connection, task_id: str, account: str, model: str, start_ms: int, end_ms: int) -> int:
    """Other unfinished tasks whose submit with this account and model left in the window and
    is not recorded yet: while there are any, one upstream candidate is not enough to say which
    task it belongs to."""
    return int(conn.execute(
        select(func.count()).select_from(Task).where(
            Task.upstream_account == account, Task.upstream_submit_at.between(start_ms, end_ms),
            Task.upstream_id.is_(None), Task.model == model, Task.id != task_id,
            Task.status.in_([Status.PENDING.value, Status.RUNNING.value]))
    ).scalar_one())


def held_ids(conn: Connection, token: str) -> set[str]:
    return set(conn.execute(select(Task.id).where(_holding(token))).scalars())


def cancel_requests(conn: Connection, token: str) -> set[str]:
    """Ids of held tasks whose owner asked for a cancel."""
    return set(conn.execute(select(Task.id).where(_holding(token), Task.cancel_requested)).scalars())
