"""Turn a request's reference URLs into checked, probed `Reference`s, all or nothing.

All references download at once. Each is fetched (or taken from the cache), sniffed, checked
against docs/protocol.md §2-3 and probed; the first failure cancels the rest and fails the
whole set with a MediaError whose message names the reference and the rule:

    InvalidURL        bad scheme, forbidden address, DNS failure, connection failure,
                      HTTP error status, too many redirects, download deadline
    InvalidParameter  too big, empty, unsupported or wrong format, pixels or seconds out of
                      bounds, a broken file, more than 5 images or 3 videos

    refs = fetch_references_sync(urls, work_dir=scratch / "refs", policy=FetchPolicy())
    input_video_seconds(refs)   # the caller caps what it bills at 5
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import MediaError, TaskCanceled
from .cache import CacheEntry, MediaCache
from .fetch import Fetched, FetchPolicy, fetch, fetch_if_modified
from .probe import Limits, probe
from .reference import Reference
from .sniff import SNIFF_BYTES, Format, Kind, refusal, sniff

__all__ = [
    "Wanted",
    "MAX_REFERENCES",
    "MAX_IMAGES",
    "MAX_VIDEOS",
    "fetch_references",
    "fetch_references_sync",
    "input_video_seconds",
]

MAX_REFERENCES, MAX_IMAGES, MAX_VIDEOS = 5, 5, 3
MAX_FILES = 11  # the media form's 5 references, their 5 voices and a first frame
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Wanted:
    """One file a task is made from: its URL, the kind it must be (None: an image or a video,
    as a reference of the urls form), and what messages call it.

    Wanted("https://example.com/v.mp3", "audio", "input.media[1].reference_voice")
    """

    url: str
    kind: Kind | None = None
    label: str = ""


async def fetch_references(
    urls: Sequence[str | Wanted],
    *,
    work_dir: Path,
    policy: FetchPolicy = FetchPolicy(),
    cache: MediaCache | None = None,
    limits: Limits = Limits(),
    kind_hint: Kind | None = None,
    local: Callable[[str], Path | None] | None = None,
) -> list[Reference]:
    """Fetch, check and probe every URL into `work_dir`, as `reference{N}.{ext}`; the N-th
    `Reference` has index N.

    `local` resolves `oss://` URLs (uploads) to files on this machine, or None when unknown.

    A plain URL is a reference of either kind, named "reference N" in messages;
    `kind_hint="video"` requires every plain URL to be a video (the deprecated
    `reference_video_urls`). A `Wanted` says its own kind and name. Plain URLs together hold
    at most 5 images and 3 videos. Files already written stay in `work_dir` when the set fails;
    the caller owns that directory.
    """
    plain = sum(isinstance(url, str) for url in urls)
    if plain == len(urls) and not 1 <= plain <= MAX_REFERENCES:
        raise MediaError(f"{plain} references given; 1 to {MAX_REFERENCES} are allowed")
    if not 1 <= len(urls) <= MAX_FILES:
        raise MediaError(f"{len(urls)} files given; 1 to {MAX_FILES} are allowed")
    wanted = [url if isinstance(url, Wanted) else Wanted(url, kind_hint) for url in urls]
    wanted = [dataclasses.replace(w, label=w.label or f"reference {i}") for i, w in enumerate(wanted, 1)]
    work_dir.mkdir(parents=True, exist_ok=True)
    ingest = _Ingest(work_dir, policy, cache, limits, local)
    references = await _all_or_nothing([ingest.one(index, w) for index, w in enumerate(wanted, 1)])
    _check_counts([ref for ref, url in zip(references, urls) if isinstance(url, str)])
    return references


def fetch_references_sync(
    urls: Sequence[str | Wanted],
    *,
    work_dir: Path,
    policy: FetchPolicy = FetchPolicy(),
    cache: MediaCache | None = None,
    limits: Limits = Limits(),
    kind_hint: Kind | None = None,
    local: Callable[[str], Path | None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[Reference]:
    """`fetch_references` for a worker thread (one without a running event loop).

    `should_cancel` (e.g. the job context's) is polled a few times a second; when it turns
    true the downloads stop and TaskCanceled is raised.
    """
    job = fetch_references(
        urls, work_dir=work_dir, policy=policy, cache=cache, limits=limits, kind_hint=kind_hint, local=local
    )
    return asyncio.run(_cancellable(job, should_cancel or (lambda: False)))


def input_video_seconds(references: Sequence[Reference]) -> float:
    """Seconds of reference video, uncapped (billing caps it at 5)."""
    return sum(ref.duration or 0.0 for ref in references if ref.kind == "video")


@dataclasses.dataclass(frozen=True)
class _Obtained:
    """A reference's file in the work dir, and the download to cache once it passes."""

    path: Path
    size: int
    sha256: str
    format: Format
    fetched: Fetched | None  # None when it came from the cache


@dataclasses.dataclass(frozen=True)
class _Ingest:
    work_dir: Path
    policy: FetchPolicy
    cache: MediaCache | None
    limits: Limits
    local: Callable[[str], Path | None] | None = None

    async def one(self, index: int, wanted: Wanted) -> Reference:
        url = wanted.url
        try:
            obtained = await self._obtain(index, url, wanted.kind)
            info = await asyncio.to_thread(probe, obtained.path, obtained.format, self.limits)
            if self.cache and obtained.fetched:  # cached only once it has passed every check
                await asyncio.to_thread(self.cache.store, url, obtained.fetched)
        except MediaError as exc:
            raise MediaError(f"{wanted.label}: {exc.message}", exc.code) from exc.__cause__ or exc
        return Reference.from_info(index, url, obtained.path, info, size=obtained.size, sha256=obtained.sha256)

    async def _obtain(self, index: int, url: str, kind: Kind | None) -> _Obtained:
        name = f"reference{index}"
        if url.startswith("oss://"):
            return await asyncio.to_thread(self._uploaded, url, name, kind)
        entry = await asyncio.to_thread(self.cache.lookup, url) if self.cache else None
        if entry and entry.is_fresh():
            if reused := await self._reuse(entry, name, kind):
                return reused
        elif entry and entry.validators:
            result = await fetch_if_modified(
                url, self.work_dir, entry.validators, kind_hint=kind, policy=self.policy, name=name
            )
            if isinstance(result, Fetched):
                return _from_download(result)
            assert self.cache is not None
            refreshed = await asyncio.to_thread(self.cache.refresh, url, result.headers)
            if refreshed and (reused := await self._reuse(refreshed, name, kind)):
                return reused
        fetched = await fetch(url, self.work_dir, kind_hint=kind, policy=self.policy, name=name)
        return _from_download(fetched)

    async def _reuse(self, entry: CacheEntry, name: str, kind: Kind | None) -> _Obtained | None:
        """The cached copy in the work dir, held to today's rules; None if it was evicted."""
        assert self.cache is not None
        if (why := refusal(entry.format, kind)) is not None:
            raise MediaError(why)
        cap = self.policy.cap(entry.format.kind)
        if entry.size > cap:
            raise MediaError(f"the file is larger than {cap / (1024 * 1024):g} MB (the limit for {entry.format.kind}s)")
        dest = self.work_dir / f"{name}.{entry.format.extension}"
        path = await asyncio.to_thread(self.cache.materialize, entry, dest)
        return _Obtained(path, entry.size, entry.sha256, entry.format, None) if path else None


    def _uploaded(self, url: str, name: str, kind: Kind | None) -> _Obtained:
        """An uploaded file, linked into the work dir and held to the same rules as downloads."""
        source = self.local(url) if self.local else None
        if source is None or not source.is_file():
            raise MediaError(f"the uploaded file {url[:200]!r} is unknown or has expired", "InvalidURL")
        with open(source, "rb") as f:
            fmt = sniff(f.read(SNIFF_BYTES))
        if (why := refusal(fmt, kind)) is not None:
            raise MediaError(f"the uploaded file: {why}")
        assert fmt is not None
        size = source.stat().st_size
        cap = self.policy.cap(fmt.kind)
        if size > cap:
            raise MediaError(f"the file is larger than {cap / (1024 * 1024):g} MB (the limit for {fmt.kind}s)")
        dest = self.work_dir / f"{name}.{fmt.extension}"
        try:
            os.link(source, dest)
        except OSError:  # another file system
            shutil.copyfile(source, dest)
        return _Obtained(dest, size, "", fmt, None)


def _from_download(fetched: Fetched) -> _Obtained:
    return _Obtained(fetched.path, fetched.size, fetched.sha256, fetched.format, fetched)


async def _all_or_nothing(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Run `jobs` at once; on the first failure cancel the others and raise it.

    Unlike asyncio.gather, the others do not keep downloading after the set has failed. When
    several have failed by then, the lowest-numbered one is reported, so messages are stable.
    """
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let them remove partial files
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


async def _cancellable(job: Awaitable[T], should_cancel: Callable[[], bool], interval: float = 0.2) -> T:
    task = asyncio.ensure_future(job)
    while not task.done():
        await asyncio.wait({task}, timeout=interval)
        if not task.done() and should_cancel():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise TaskCanceled()
    return task.result()


def _check_counts(references: Sequence[Reference]) -> None:
    """At most 5 images and 3 videos, known only now that the bytes were sniffed."""
    seen = {"image": 0, "video": 0, "audio": 0}
    limits = {"image": MAX_IMAGES, "video": MAX_VIDEOS, "audio": 0}
    for ref in references:
        seen[ref.kind] += 1
        if seen[ref.kind] > limits[ref.kind]:
            raise MediaError(
                f"reference {ref.index}: more than {limits[ref.kind]} {ref.kind} references"
                f" (at most {MAX_IMAGES} images and {MAX_VIDEOS} videos)"
            )
