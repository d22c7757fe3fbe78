"""A task's references, fetched and checked for its engine: downloads through `media.ingest`,
and `oss://` keys through the uploads of the task's owner (and nobody else's).

The urls form has references only. The media form (docs/protocol.md §3) declares each item's
kind, and may add a first frame and a voice per reference; all of them are fetched at once,
all or nothing."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from .config import Settings
from .media.cache import MediaCache
from .media.fetch import FetchPolicy
from .media.ingest import Wanted, fetch_references_sync
from .media.probe import Limits
from .media.reference import Reference
from .media.sniff import Kind
from .spec import TaskSpec, oss_key
from .storage.base import Storage
from .app import uploads

__all__ = ["ReferenceLoader", "TaskMedia"]

# The media form's own rules for reference videos (docs/protocol.md §3).
_MEDIA_LIMITS = Limits(min_video_side=240, max_video_side=4096)
_KINDS: dict[str, Kind] = {"reference_image": "image", "reference_video": "video", "first_frame": "image"}


@dataclasses.dataclass(frozen=True)
class TaskMedia:
    """What a task is made from, fetched and checked: references in prompt order (index N is
    characterN), the media form's first frame, and voices by reference number."""

    references: tuple[Reference, ...]
    first_frame: Reference | None = None
    voices: dict[int, Reference] = dataclasses.field(default_factory=dict)


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
    def from_settings(cls, settings: Settings, db: Engine, uploads_storage: Storage,
                      retention_ms: int) -> ReferenceLoader:
        policy = FetchPolicy(
            connect_timeout=settings.fetch_connect_timeout, total_timeout=settings.fetch_timeout,
            max_redirects=settings.fetch_max_redirects, allow=tuple(settings.fetch_allow),
            verify=ssl.create_default_context(),  # loaded once: each load costs ~45 ms of CPU
        )
        cache = MediaCache(settings.cache_dir, max_bytes=settings.cache_max_bytes) if settings.cache_max_bytes else None
        return cls(db, uploads_storage, policy, cache, retention_ms)

    def __call__(self, spec: TaskSpec, owner: str, work_dir: Path, should_cancel: Callable[[], bool]) -> TaskMedia:
        def local(url: str) -> Path | None:
            return self.own_upload(owner, oss_key(url))

        if spec.form != "media":
            return TaskMedia(tuple(fetch_references_sync(
                spec.reference_urls, work_dir=work_dir, policy=self.policy, cache=self.cache,
                kind_hint="video" if spec.videos_only else None, local=local, should_cancel=should_cancel,
            )))
        refs = [(i, item) for i, item in enumerate(spec.media) if item.is_reference]
        frames = [(i, item) for i, item in enumerate(spec.media) if item.type == "first_frame"]
        voiced = [(n, i, item.reference_voice) for n, (i, item) in enumerate(refs, 1) if item.reference_voice]
        wanted: list[str | Wanted] = [Wanted(item.url, _KINDS[item.type], f"input.media[{i}]")
                                      for i, item in refs + frames]
        wanted += [Wanted(voice, "audio", f"input.media[{i}].reference_voice") for _, i, voice in voiced]
        found = fetch_references_sync(
            wanted, work_dir=work_dir, policy=self.policy, cache=self.cache, limits=_MEDIA_LIMITS, local=local,
            should_cancel=should_cancel,
        )
        references, rest = found[: len(refs)], found[len(refs):]
        first_frame = rest.pop(0) if frames else None
        return TaskMedia(tuple(references), first_frame, {n: voice for (n, _, _), voice in zip(voiced, rest)})

    def own_upload(self, owner: str, key: str) -> Path | None:
        """The file behind `oss://<key>` if `owner` uploaded it (and it has not expired)."""
        record = uploads.find_upload(self.db, owner, key, self.retention_ms)
        return self.uploads.local_path(record.blob) if record else None
