"""Results in a local folder, served with Range support by Starlette's FileResponse."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response

from ..errors import NotFound
from .base import StorageUnavailable, StoredObject, disk_full

__all__ = ["LocalStorage"]

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
# `.<key>.<random>.partial`: the leading dot makes it a name no key can have (an upload blob
# may well end in `.partial`), the random part keeps two puts of one key apart.
_PARTIAL = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.[0-9a-f]{8}\.partial$")


class LocalStorage:
    """`LocalStorage(Path("results"))` keeps `key` at `results/key`.

    The folder must be the storage's own: the orphan sweep removes any file in it, named like a
    key, that no row names.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key:
            raise NotFound(f"no result named {key!r}")
        return self.root / key

    def put(self, key: str, source: Path) -> None:
        target = self.path(key)
        partial = self.root / f".{key}.{secrets.token_hex(4)}.partial"
        try:
            shutil.copyfile(source, partial)
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial, target)
        except OSError as exc:
            if disk_full(exc):  # the API answers 503, a worker retries the task later
                raise StorageUnavailable(f"storing {key} failed: the disk is full") from exc
            raise
        finally:
            partial.unlink(missing_ok=True)  # a failed copy leaves nothing; a crash leaves it to the sweep

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None

    def response(self, key: str, request: Request) -> Response:
        path = self.path(key)
        if not path.is_file():
            raise NotFound("the result has expired or does not exist")
        return VideoFile(path, media_type="video/mp4", filename=key, content_disposition_type="inline")

    def listing(self) -> Iterator[StoredObject]:
        """The folder's files named like a key or like one of our partials; anything else
        (sub-folders, links, hidden files) is not ours and is never reported. A `<key>.partial`
        left by an earlier version is a valid key that no row names, so it is swept too."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                partial = bool(_PARTIAL.match(entry.name))
                if not partial and (not _SAFE_KEY.match(entry.name) or ".." in entry.name):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    modified = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:  # renamed into place or removed since the scan
                    continue
                yield StoredObject(entry.name, modified, partial)

    def discard(self, item: StoredObject) -> None:
        if item.partial:
            if not _PARTIAL.match(item.name):
                raise NotFound(f"no partial file named {item.name!r}")
            (self.root / item.name).unlink(missing_ok=True)
        else:
            self.delete(item.name)


class VideoFile(FileResponse):
    """Starlette's file answer, except that a Range header it cannot read is ignored, as RFC 9110
    (section 14.2) allows, and the whole file is sent: players retry with a good one, and a
    plain-text 400 is not an answer any client of this API expects."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []
