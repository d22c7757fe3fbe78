"""What the server answers, as frozen dataclasses: `Task`, `Usage`, `TaskSummary`, `TaskPage`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

__all__ = ["Task", "Usage", "TaskSummary", "TaskPage", "TERMINAL_STATES"]

# A task in one of these states will not change again (UNKNOWN: never existed, or expired).
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


@dataclass(frozen=True)
class Usage:
    """What a SUCCEEDED task is billed for: seconds of reference video (capped at 5) plus output.

    `SR` is the resolution tier (720 or 1080); `audio` is a ref2video extension (None elsewhere).
    """

    duration: int
    input_video_duration: int
    output_video_duration: int
    video_count: int
    SR: int
    size: str  # the urls form's; "" for the media form
    audio: bool | None = None
    ratio: str | None = None  # the media form's

    @classmethod
    def from_json(cls, usage: dict[str, Any]) -> Usage:
        audio = usage.get("audio")
        return cls(
            duration=_whole(usage.get("duration")),
            input_video_duration=_whole(usage.get("input_video_duration")),
            output_video_duration=_whole(usage.get("output_video_duration")),
            video_count=_whole(usage.get("video_count"), 1),
            SR=_whole(usage.get("SR")),
            size=str(usage.get("size") or ""),
            audio=audio if isinstance(audio, bool) else None,
            ratio=_optional_str(usage.get("ratio")),
        )


@dataclass(frozen=True)
class Task:
    """One task as the server last described it; `raw` is the whole JSON answer.

    ```python
    task = client.get(task_id)
    if task.done and task.status == "SUCCEEDED":
        print(task.video_url, task.usage)
    ```
    """

    id: str
    status: str
    progress: int | None = None
    queue_position: int | None = None
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    video_url: str | None = None
    code: str | None = None
    message: str | None = None
    seed: int | None = None
    engine: str | None = None
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the task is SUCCEEDED, FAILED, CANCELED or UNKNOWN: it will not change again."""
        return self.status in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Task:
        """A task from a query (or create) answer `{"request_id", "output": {...}, "usage": {...}}`."""
        out = body.get("output") or {}
        usage = body.get("usage")
        return cls(
            id=str(out.get("task_id", "")),
            status=str(out.get("task_status", "UNKNOWN")),
            progress=_optional_int(out.get("progress")),
            queue_position=_optional_int(out.get("queue_position")),
            submit_time=_optional_str(out.get("submit_time")),
            scheduled_time=_optional_str(out.get("scheduled_time")),
            end_time=_optional_str(out.get("end_time")),
            video_url=_optional_str(out.get("video_url")),
            code=_optional_str(out.get("code")),
            message=_optional_str(out.get("message")),
            seed=_optional_int(out.get("seed")),
            engine=_optional_str(out.get("engine")),
            usage=Usage.from_json(usage) if isinstance(usage, dict) and usage else None,
            raw=body,
        )


@dataclass(frozen=True)
class TaskSummary:
    """One row of the task list; times are timezone-aware UTC datetimes."""

    id: str
    status: str
    model: str
    created: datetime
    started: datetime | None = None
    ended: datetime | None = None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> TaskSummary:
        created = _from_epoch_ms(item.get("gmt_create"))
        return cls(
            id=str(item.get("task_id", "")),
            status=str(item.get("status", "UNKNOWN")),
            model=str(item.get("model_name", "")),
            created=created or datetime.fromtimestamp(0, UTC),
            started=_from_epoch_ms(item.get("start_time")),
            ended=_from_epoch_ms(item.get("end_time")),
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of the task list, newest first; iterate it for its `items`."""

    items: list[TaskSummary]
    total: int
    total_page: int
    page_no: int
    page_size: int

    def __iter__(self) -> Iterator[TaskSummary]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TaskPage:
        rows = body.get("data") or []
        return cls(
            items=[TaskSummary.from_json(row) for row in rows if isinstance(row, dict)],
            total=_whole(body.get("total")),
            total_page=_whole(body.get("total_page")),
            page_no=_whole(body.get("page_no"), 1),
            page_size=_whole(body.get("page_size"), len(rows)),
        )


def _whole(value: Any, default: int = 0) -> int:
    number = _optional_int(value)
    return default if number is None else number


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _from_epoch_ms(value: Any) -> datetime | None:
    ms = _optional_int(value)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
