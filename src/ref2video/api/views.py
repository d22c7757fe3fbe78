"""Task records as the protocol's JSON (docs/protocol.md §4-6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from ..protocol import Status, format_time
from ..storage.signing import UrlSigner
from ..app.tasks import TaskRecord

__all__ = ["task_output", "unknown_output", "list_item", "wire_status"]


def task_output(task: TaskRecord, *, tz: ZoneInfo, signer: UrlSigner, base_url: Callable[[], str]) -> dict[str, Any]:
    """`{"output": ..., "usage": ...}` for a task the caller may see. `base_url` is asked for
    only when a link is signed (SUCCEEDED), as working it out costs on every poll."""
    out: dict[str, Any] = {
        "task_id": task.id,
        "task_status": wire_status(task),
        "submit_time": format_time(task.submitted_at, tz),
    }
    if task.scheduled_at is not None:
        out["scheduled_time"] = format_time(task.scheduled_at, tz)
    if task.ended_at is not None:
        out["end_time"] = format_time(task.ended_at, tz)
    out["progress"] = task.progress
    out["seed"] = task.spec.get("seed")
    if task.engine:
        out["engine"] = task.engine
    if task.status is Status.PENDING:
        out["queue_position"] = task.queue_position or 0
    body: dict[str, Any] = {"output": out}
    if task.status is Status.SUCCEEDED and task.result_key:
        out["orig_prompt"] = task.spec.get("prompt", "")
        out["video_url"] = signer.sign(base_url(), task.result_key)
        body["usage"] = task.usage
    elif task.status is Status.FAILED:
        out["code"] = task.error_code or "InternalError"
        out["message"] = task.error_message or ""
    return body


def wire_status(task: TaskRecord) -> str:
    """The state a client sees: a relayed task the provider still holds PENDING is PENDING
    here too (and may be canceled, as the provider allows)."""
    if task.status is Status.RUNNING and task.upstream_status == Status.PENDING.value:
        return Status.PENDING.value
    return task.status.value


def unknown_output(task_id: str) -> dict[str, Any]:
    return {"output": {"task_id": task_id, "task_status": Status.UNKNOWN.value}}


def list_item(task: TaskRecord) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "status": wire_status(task),
        "model_name": task.model,
        "gmt_create": task.submitted_at,
        "start_time": task.scheduled_at,
        "end_time": task.ended_at,
        "prompt": task.spec.get("prompt", ""),  # an extension: whose task is which, at a glance
    }
