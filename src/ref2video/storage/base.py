"""The result storage interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Storage"]


class Storage(Protocol):
    """Keeps result files by key. Keys are flat names like `<task_id>.mp4`."""

    def put(self, key: str, source: Path) -> None:
        """Store `source` under `key` atomically (readers never see half a file)."""

    def delete(self, key: str) -> None:
        """Remove `key`; no error if it is already gone."""

    def exists(self, key: str) -> bool: ...

    def local_path(self, key: str) -> Path | None:
        """A file on this machine with the object's bytes (a remote store would download it
        to a cache first), or None when there is no such object."""

    def response(self, key: str, request: Request) -> Response:
        """An HTTP answer for the stored file, honouring Range requests."""
