"""A disk cache of fetched references, keyed by URL and deduplicated by content.

The same reference URLs come back often (a character used in many tasks), so a copy is kept:
reused without any request while fresh (Cache-Control s-maxage / max-age, Expires, or a
default freshness), revalidated with If-None-Match / If-Modified-Since when stale (304 means
reuse), and downloaded again otherwise. Blobs are named by their sha256, so two URLs with the
same bytes share one file. The total size is bounded; the least recently used blobs go first.
Responses marked `no-store` or `private` are not kept: this cache is shared by every caller.

The index is a small SQLite file next to the blobs, not JSON: SQLite transactions make
"check, update, evict" atomic across threads *and* processes on one disk (a JSON index would
need its own file lock and a full rewrite on every hit), LRU order is an indexed query, and
it ships with Python. Blob files are written to a temporary name and moved into place with
`os.replace`, and deleted only inside a write transaction, so no reader sees half a file and
an eviction never races a store of the same blob. Readers take a hard link (or a copy) of a
blob before using it, so a later eviction cannot pull a file out from under a running task.

    cache = MediaCache(Path("cache"), max_bytes=2 << 30)
    entry = cache.lookup(url)
    if entry and entry.is_fresh():
        path = cache.materialize(entry, work_dir / "reference1.png")
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import os
import shutil
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .fetch import Fetched, Validators
from .sniff import FORMATS, Format

__all__ = ["MediaCache", "CacheEntry", "freshness_lifetime"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_last_used ON blobs (last_used);
CREATE TABLE IF NOT EXISTS urls (
    url TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    final_url TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    content_type TEXT,
    fresh_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS urls_sha256 ON urls (sha256);
"""
_ENTRY_COLUMNS = (
    "u.url, u.sha256, b.size, b.format, u.final_url, u.etag, u.last_modified, u.content_type, u.fresh_until"
)
_STALE_TEMP_SECONDS = 3600.0  # a temp file this old was left by a crashed writer


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """What the cache knows about one URL."""

    url: str
    sha256: str
    size: int
    format: Format
    final_url: str
    etag: str | None
    last_modified: str | None
    content_type: str | None
    fresh_until: float  # epoch seconds
    path: Path  # the shared blob; use MediaCache.materialize() to get a private link

    def is_fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.fresh_until

    @property
    def validators(self) -> Validators | None:
        """What to revalidate with, or None when the server gave no validator."""
        if self.etag or self.last_modified:
            return Validators(self.etag, self.last_modified)
        return None


class MediaCache:
    """Fetched references on disk: `root/index.sqlite3` and `root/blobs/ab/abcdef...`.

    cache = MediaCache(Path("/var/cache/ref2video"), max_bytes=2 << 30, default_ttl=3600)
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 2 << 30,
        default_ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self.clock = clock
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._db = self.root / "index.sqlite3"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._blobs.mkdir(exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            db.executescript(_SCHEMA)
        self._remove_stale_temps()

    # -- reading -------------------------------------------------------------------------

    def lookup(self, url: str) -> CacheEntry | None:
        """The entry for `url`, fresh or stale, or None."""
        with self._connect() as db:
            row = self._row(db, url)
        return self._entry(row) if row else None

    def materialize(self, entry: CacheEntry, dest: Path) -> Path | None:
        """Link (or copy) the entry's blob to `dest`; None if it was evicted meanwhile."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            _link_or_copy(entry.path, dest)
        except FileNotFoundError:
            self._forget(entry.url)
            return None
        with self._write() as db:
            db.execute("UPDATE blobs SET last_used = ? WHERE sha256 = ?", (self.clock(), entry.sha256))
        return dest

    @property
    def total_bytes(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])

    # -- writing -------------------------------------------------------------------------

    def store(self, url: str, fetched: Fetched) -> CacheEntry | None:
        """Keep `fetched` for `url`; None when its headers forbid it or it could never fit."""
        now = self.clock()
        lifetime = freshness_lifetime(fetched.headers, now, self.default_ttl)
        if lifetime is None or fetched.size > self.max_bytes:
            return None
        blob = self._blob_path(fetched.sha256)
        staged = None if blob.exists() else self._stage(fetched.path)
        try:
            with self._write() as db:
                self._place_blob(db, blob, staged, fetched, now)
                db.execute(
                    "INSERT OR REPLACE INTO urls VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (url, fetched.sha256, fetched.url, fetched.headers.get("etag"),
                     fetched.headers.get("last-modified"), fetched.content_type, now + lifetime),
                )  # fmt: skip
                self._evict(db, keep=fetched.sha256)
                # Read in the same transaction: another store's eviction may drop this blob as
                # soon as it commits, and the caller still gets the entry it stored (materialize
                # answers None if the file is gone by then).
                row = self._row(db, url)
        finally:
            if staged:
                staged.unlink(missing_ok=True)
        return self._entry(row) if row else None

    def refresh(self, url: str, headers: Mapping[str, str]) -> CacheEntry | None:
        """Record a 304 answer: the copy is fresh again (or forgotten, if now `no-store`)."""
        now = self.clock()
        lifetime = freshness_lifetime(headers, now, self.default_ttl)
        if lifetime is None:
            self._forget(url)
            return None
        if "cache-control" not in headers and "expires" not in headers:
            # The stored response's own rules (perhaps no-cache) are not kept here, so a 304
            # that repeats none of them must not make the copy fresh: ask again next time.
            lifetime = 0.0
        with self._write() as db:
            db.execute(
                "UPDATE urls SET fresh_until = ?, etag = COALESCE(?, etag),"
                " last_modified = COALESCE(?, last_modified) WHERE url = ?",
                (now + lifetime, headers.get("etag"), headers.get("last-modified"), url),
            )
        return self.lookup(url)

    def evict(self) -> int:
        """Trim to `max_bytes` now; returns the bytes freed."""
        with self._write() as db:
            return self._evict(db, keep=None)

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: sqlite3 connections must not be shared between threads.
        db = sqlite3.connect(self._db, timeout=30.0, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the lock up front, so no deadlock."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def _stage(self, source: Path) -> Path:
        """`source` under a temp name, read-only, ready to be moved into place.

        A hard link saves copying up to 100 MB; it makes the caller's file read-only too,
        which suits a reference (nobody should write to it) and still lets it be deleted.
        """
        staged = self._tmp / f"{uuid.uuid4().hex}.part"
        _link_or_copy(source, staged)
        staged.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return staged

    def _place_blob(
        self, db: sqlite3.Connection, blob: Path, staged: Path | None, fetched: Fetched, now: float
    ) -> None:
        if not blob.exists():  # evicted since we looked, or never there
            staged = staged or self._stage(fetched.path)
            blob.parent.mkdir(exist_ok=True)
            os.replace(staged, blob)
        db.execute(
            "INSERT INTO blobs VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET last_used = excluded.last_used",
            (fetched.sha256, fetched.size, fetched.format.name, now),
        )

    def _evict(self, db: sqlite3.Connection, keep: str | None) -> int:
        """Drop least recently used blobs until the total fits. Runs inside a write transaction,
        so the files go while no one else can be storing them."""
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
        freed = 0
        for sha256, size in db.execute("SELECT sha256, size FROM blobs ORDER BY last_used").fetchall():
            if total - freed <= self.max_bytes:
                break
            if sha256 == keep:
                continue
            db.execute("DELETE FROM urls WHERE sha256 = ?", (sha256,))
            db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            self._blob_path(sha256).unlink(missing_ok=True)
            freed += size
        return freed

    @staticmethod
    def _row(db: sqlite3.Connection, url: str) -> tuple | None:  # type: ignore[type-arg]
        return db.execute(  # type: ignore[no-any-return]
            f"SELECT {_ENTRY_COLUMNS} FROM urls u JOIN blobs b USING (sha256) WHERE u.url = ?", (url,)
        ).fetchone()

    def _forget(self, url: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM urls WHERE url = ?", (url,))

    def _entry(self, row: tuple) -> CacheEntry:  # type: ignore[type-arg]
        url, sha256, size, fmt, final_url, etag, last_modified, content_type, fresh_until = row
        fmt_by_name = {f.name: f for f in FORMATS}
        return CacheEntry(url, sha256, size, fmt_by_name[fmt], final_url, etag, last_modified, content_type,
                          fresh_until, self._blob_path(sha256))  # fmt: skip

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for leftover in self._tmp.glob("*.part"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()


def freshness_lifetime(headers: Mapping[str, str], now: float, default_ttl: float) -> float | None:
    """Seconds a response stays fresh from `now` (0: revalidate every time), or None when it
    must not be stored. A shared cache's reading of RFC 9111: s-maxage, max-age, Expires."""
    directives = _cache_control(headers.get("cache-control", ""))
    if "no-store" in directives or "private" in directives:
        return None
    if "no-cache" in directives:
        return 0.0
    age = _number(headers.get("age")) or 0.0
    for name in ("s-maxage", "max-age"):
        seconds = _number(directives.get(name))
        if seconds is not None:
            return max(0.0, seconds - age)
    expires = _http_date(headers.get("expires"))
    if "expires" in headers:
        # An unparseable Expires ("0", "-1") means "already expired".
        served = _http_date(headers.get("date")) or now
        return max(0.0, expires - served) if expires is not None else 0.0
    return default_ttl


def _cache_control(value: str) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            directives[name.lower()] = argument.strip('"') if argument else None
    return directives


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, dest)
