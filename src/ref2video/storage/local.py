"""Results in a local folder, served with Range support by Starlette's FileResponse."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import NotFound

__all__ = ["LocalStorage"]

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class LocalStorage:
    """`LocalStorage(Path("results"))` keeps `key` at `results/key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key:
            raise NotFound(f"no result named {key!r}")
        return self.root / key

    def put(self, key: str, source: Path) -> None:
        target = self.path(key)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)

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
        return FileResponse(path, media_type="video/mp4", filename=key, content_disposition_type="inline")
