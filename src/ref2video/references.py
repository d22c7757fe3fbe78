"""A task's references, fetched and checked for its engine: downloads through `media.ingest`,
and `oss://` keys through the uploads of the task's owner (and nobody else's)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from .config import Settings
from .media.cache import MediaCache
from .media.fetch import FetchPolicy
from .media.ingest import fetch_references_sync
from .media.reference import Reference
from .spec import TaskSpec, oss_key
from .storage.base import Storage
from .store import uploads

__all__ = ["ReferenceLoader"]


class ReferenceLoader:
    """`loader(spec, owner, work_dir, should_cancel)` -> the spec's references, in order."""

    def __init__(self, db: Engine, uploads_storage: Storage, policy: FetchPolicy, cache: MediaCache | None,
                 retention_ms: int) -> None:
        self.db = db
        self.uploads = uploads_storage
        self.policy = policy
        self.cache = cache
        self.retention_ms = retention_ms

    @classmethod
    def from_settings(cls, settings: Settings, db: Engine, uploads_storage: Storage, retention_ms: int) -> ReferenceLoader:
        policy = FetchPolicy(
            connect_timeout=settings.fetch_connect_timeout, total_timeout=settings.fetch_timeout,
            max_redirects=settings.fetch_max_redirects, allow=tuple(settings.fetch_allow),
            verify=ssl.create_default_context(),  # loaded once: each load costs ~45 ms of CPU
        )
        cache = MediaCache(settings.cache_dir, max_bytes=settings.cache_max_bytes) if settings.cache_max_bytes else None
        return cls(db, uploads_storage, policy, cache, retention_ms)

    def __call__(self, spec: TaskSpec, owner: str, work_dir: Path, should_cancel: Callable[[], bool]) -> list[Reference]:
        def local(url: str) -> Path | None:
            return self.own_upload(owner, oss_key(url))

        return fetch_references_sync(
            spec.reference_urls, work_dir=work_dir, policy=self.policy, cache=self.cache,
            kind_hint="video" if spec.videos_only else None, local=local, should_cancel=should_cancel,
        )

    def own_upload(self, owner: str, key: str) -> Path | None:
        """The file behind `oss://<key>` if `owner` uploaded it (and it has not expired)."""
        record = uploads.find_upload(self.db, owner, key, self.retention_ms)
        return self.uploads.local_path(record.blob) if record else None
