"""The result storage interface."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from ..errors import ServiceUnavailable

__all__ = ["Storage", "StoredObject", "StorageUnavailable", "disk_full"]

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class StorageUnavailable(ServiceUnavailable):
    """The storage cannot be reached now (a bucket down, slow past its timeouts). The API
    answers 503 ServiceUnavailable; a worker retries the task later, with the task code
    `StorageUnavailable` (failing it so once its attempts are spent)."""


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, says the disk (or the
    user's quota on it) is full: a fault that passes, not a bug; worth a retry later."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One entry of `Storage.listing()`. A backend may subclass it to carry what it needs to
    remove the object (an S3 backend: the upload id of an unfinished multipart upload)."""

    name: str  # the key; for a partial, the backend's own name for the leftover
    modified: float  # epoch seconds of the last write
    partial: bool = False  # an unfinished `put` (a crash mid-write), never readable by key


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

    def listing(self) -> Iterator[StoredObject]:
        """Every object kept, complete or partial, in no particular order. Objects put or
        removed while it runs may or may not appear; the orphan sweep relies on no more."""

    def discard(self, item: StoredObject) -> None:
        """Remove what `listing` reported as `item`, partial or not; no error if it is
        already gone."""
