"""The webhook outbox: messages queued in the transaction of the change they report, and the
sender's side of the table (claim, record, release, sweep), each in a transaction of its own.

`enqueue` runs inside every transition that a task's owner hears about (`effects.after`): it
reads the tasks, their callback URL and their owners' enabled endpoints whose event filter
matches, and writes one message per (task, URL, event). It commits with the state change or
not at all, so no event is lost to a crash and none is announced for a change that rolled back.

A message's id (`webhook-id`) is derived from (task, event, endpoint), so it is the same at
every attempt and in every process, and a task announces each event at most once per
endpoint: `task.running` at its first claim only, not again when a retry or a lapsed lease
claims it anew.

Payloads carry no signed `video_url`: a delivery may be retried for a day, well past a link's
life, and the link needs no key. The receiver asks for the task (`GET /api/v1/tasks/{id}`) to
get a fresh one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, UTC
from typing import Any

from sqlalchemy import Connection, Engine, select

from ..protocol import WEBHOOK_EVENTS, Status
from ..store import webhooks as store
from ..store.db import is_postgres, now_ms
from ..store.models import Task
from ..store.webhooks import OutboxRow

__all__ = [
    "EVENTS", "ALL_EVENTS", "Delivery", "Backoff", "new_secret", "message_id", "enqueue", "claim", "record",
    "release", "sweep",
]

EVENTS: dict[Status, str] = WEBHOOK_EVENTS  # named in ref2video.protocol, where the CLI reads them
ALL_EVENTS: tuple[str, ...] = tuple(EVENTS.values())

_ERROR_CHARS = 1000  # of last_error


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def message_id(task_id: str, event: str, endpoint_id: str | None) -> str:
    """The stable `webhook-id` of a task's event to one endpoint (None: the task's callback)."""
    digest = hashlib.sha256(f"{task_id}\n{event}\n{endpoint_id or ''}".encode()).hexdigest()
    return f"msg_{digest[:40]}"


# -- in the transition's transaction ---------------------------------------------------------


_TASK_COLUMNS = (Task.id, Task.owner, Task.model, Task.status, Task.spec, Task.callback_url, Task.submitted_at,
                 Task.scheduled_at, Task.ended_at, Task.engine, Task.usage, Task.error_code, Task.error_message,
                 Task.attempt)


def enqueue(conn: Connection, task_ids: Sequence[str], status: Status) -> int:
    """Queue the event of `task_ids` having moved to `status`, on the transition's connection;
    how many messages were written."""
    event = EVENTS.get(status)
    if event is None or not task_ids:
        return 0
    tasks = conn.execute(select(*_TASK_COLUMNS).where(Task.id.in_(list(task_ids)))).all()
    endpoints = store.endpoints_of(conn, {t.owner for t in tasks})
    now = now_ms()
    rows = []
    for task in tasks:
        targets: list[tuple[str | None, str]] = [
            (e.id, e.url) for e in endpoints if e.owner == task.owner and event in e.events
        ]
        if task.callback_url:
            targets.append((None, task.callback_url))
        payload = _payload(task, event, now) if targets else None
        for endpoint_id, url in targets:
            rows.append(dict(
                message_id=message_id(task.id, event, endpoint_id), owner=task.owner, endpoint_id=endpoint_id,
                url=url, event=event, task_id=task.id, payload=payload, created_at=now, next_at=now, attempts=0,
            ))
    store.insert_messages(conn, rows)
    return len(rows)


def _payload(task: Any, event: str, now: int) -> dict[str, Any]:
    spec = task.spec or {}
    data: dict[str, Any] = {
        "task_id": task.id,
        "task_status": task.status,
        "model": task.model,
        "submitted_at": _iso(task.submitted_at),
        "scheduled_at": _iso(task.scheduled_at),
        "ended_at": _iso(task.ended_at),
        "attempt": task.attempt,
        "seed": spec.get("seed"),
    }
    if task.engine:
        data["engine"] = task.engine
    if task.status == Status.SUCCEEDED.value:
        data["orig_prompt"] = spec.get("prompt", "")
        data["usage"] = task.usage
    elif task.status == Status.FAILED.value:
        data["code"] = task.error_code or "InternalError"
        data["message"] = task.error_message or ""
    return {"type": event, "timestamp": _iso(now), "data": data}


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the sender's side -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A claimed message and the secret that signs it."""

    message: OutboxRow
    secret: str


@dataclasses.dataclass(frozen=True)
class Backoff:
    """When a failed message is tried again: `first_s` after the first failure, doubling to
    `max_s`, until `window_s` after it was queued; the last attempt falls at the window's end."""

    first_s: float = 5.0
    max_s: float = 3600.0
    window_s: float = 86400.0

    def next_at(self, message: OutboxRow, now: int) -> int | None:
        """The next attempt's time, or None to give up."""
        deadline = message.created_at + int(self.window_s * 1000)
        if now >= deadline:
            return None
        delay = min(self.first_s * 2 ** min(max(message.attempts - 1, 0), 40), self.max_s)
        return min(now + int(delay * 1000), deadline)


def claim(db: Engine, *, limit: int, lease_ms: int) -> list[Delivery]:
    """Take up to `limit` due messages for `lease_ms`, with their secrets. A message to an
    endpoint removed meanwhile is given up here."""
    now = now_ms()
    with db.connect() as conn:
        if not store.any_due(conn, now):  # an idle sender only reads
            return []
    with db.begin() as conn:
        claimed = store.claim_due(conn, now=now, limit=limit, lease_ms=lease_ms, skip_locked=is_postgres(db))
        if not claimed:
            return []
        endpoint_secrets = store.enabled_secrets(conn, {m.endpoint_id for m in claimed if m.endpoint_id})
        owner_secrets = {owner: store.owner_secret(conn, owner, new_secret(), now)
                         for owner in {m.owner for m in claimed if m.endpoint_id is None}}
        out = []
        for message in claimed:
            if message.endpoint_id is None:
                out.append(Delivery(message, owner_secrets[message.owner]))
            elif (secret := endpoint_secrets.get(message.endpoint_id)) is not None:
                out.append(Delivery(message, secret))
            else:
                store.give_up(conn, message.id, message.attempts, now, "the endpoint was removed")
        return out


def record(db: Engine, message: OutboxRow, error: str | None, backoff: Backoff) -> str | None:
    """Record an attempt's outcome: "delivered", "retry" or "given_up"; None when the message
    was no longer this attempt's (its lease lapsed and another sender took it)."""
    now = now_ms()
    with db.begin() as conn:
        if error is None:
            return "delivered" if store.delivered(conn, message.id, message.attempts, now) else None
        error = error[:_ERROR_CHARS]
        next_at = backoff.next_at(message, now)
        if next_at is None:
            return "given_up" if store.give_up(conn, message.id, message.attempts, now, error) else None
        return "retry" if store.retry_at(conn, message.id, message.attempts, next_at, error) else None


def release(db: Engine, messages: Sequence[OutboxRow]) -> None:
    """Hand back claimed messages that were not tried (the sender is stopping)."""
    with db.begin() as conn:
        for message in messages:
            store.release(conn, message.id, message.attempts)


def sweep(db: Engine, *, keep_ms: int) -> int:
    """Remove delivered and given-up messages older than `keep_ms`; how many went."""
    removed = 0
    while True:
        with db.begin() as conn:
            count = store.delete_finished(conn, now_ms() - keep_ms)
        removed += count
        if count < 1000:
            return removed
