"""Log lines an operator can follow: text or JSON (`log_format`), each carrying the id of the
request and of the task it is about, read from context variables.

A leaf like `ref2video.metrics`: it imports nothing of ref2video, so every layer may use it.
The HTTP layer sets `REQUEST_ID` for each request (api/guard.py); workers set `TASK_ID` while
they run a task. A line about one task names it in `extra={"task_id": ...}`, which wins over
the context. Any other `extra` field given as `extra={"fields": {...}}` is a JSON key of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["REQUEST_ID", "TASK_ID", "ContextFilter", "JsonFormatter", "TextFormatter", "configure", "task_context"]

REQUEST_ID: ContextVar[str | None] = ContextVar("ref2video_request_id", default=None)
TASK_ID: ContextVar[str | None] = ContextVar("ref2video_task_id", default=None)

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Puts `request_id` and `task_id` on every record (None when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = TASK_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id=... task_id=...]`."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{name}={value}" for name in ("request_id", "task_id")
               if (value := getattr(record, name, None)) is not None]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, request_id,
    task_id, the `fields` of the record, and the traceback as `exc_info` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{at}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "task_id": getattr(record, "task_id", None),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """The root logger's one handler (stderr) in `fmt` ("text" or "json"), replacing any."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers have handlers of their own; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@contextlib.contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Every line logged inside names `task_id`."""
    token = TASK_ID.set(task_id)
    try:
        yield
    finally:
        TASK_ID.reset(token)
