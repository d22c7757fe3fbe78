"""media/cache.py: a shared disk cache keyed by URL, deduplicated by content, bounded by LRU."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from ref2video.media.cache import MediaCache, freshness_lifetime
from ref2video.media.fetch import Fetched
from ref2video.media.sniff import PNG

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fetched(
    directory: Path, content: bytes, headers: Mapping[str, str] | None = None, name: str | None = None
) -> Fetched:
    """A download as fetch() would return it, without the network."""
    sha256 = hashlib.sha256(content).hexdigest()
    path = directory / f"{name or sha256}.png"
    path.write_bytes(content)
    return Fetched(path, len(content), "http://example.test/final", sha256, PNG, dict(headers or {}))


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({}, 600.0),  # the default
        ({"cache-control": "max-age=60"}, 60.0),
        ({"cache-control": "public, max-age=60", "age": "20"}, 40.0),
        ({"cache-control": "max-age=60, s-maxage=5"}, 5.0),  # a shared cache reads s-maxage
        ({"cache-control": 'max-age="30"'}, 30.0),
        ({"cache-control": "no-cache"}, 0.0),
        ({"cache-control": "no-store"}, None),
        ({"cache-control": "private, max-age=600"}, None),  # shared by every caller: not ours to keep
        ({"expires": "Wed, 21 Oct 2015 08:28:00 GMT", "date": DATE}, 3600.0),
        ({"expires": "0"}, 0.0),
        ({"cache-control": "max-age=10", "expires": "Wed, 21 Oct 2015 08:28:00 GMT", "date": DATE}, 10.0),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], lifetime: float | None) -> None:
    assert freshness_lifetime(headers, now=0.0, default_ttl=600.0) == lifetime


def test_a_stored_entry_is_found_fresh_then_stale(tmp_path: Path) -> None:
    clock = Clock()
    cache = MediaCache(tmp_path / "cache", clock=clock)
    download = fetched(
        tmp_path,
        b"png-bytes",
        {"etag": '"a"', "last-modified": DATE, "cache-control": "max-age=60", "content-type": "image/png"},
    )
    entry = cache.store("http://example.test/a.png", download)
    assert entry is not None and entry == cache.lookup("http://example.test/a.png")
    assert (entry.sha256, entry.size, entry.format, entry.final_url) == (
        download.sha256,
        9,
        PNG,
        "http://example.test/final",
    )
    assert (entry.etag, entry.last_modified, entry.content_type) == ('"a"', DATE, "image/png")
    assert entry.path.read_bytes() == b"png-bytes"
    assert not os.access(entry.path, os.W_OK) or os.geteuid() == 0  # blobs are read-only
    assert entry.is_fresh(clock.now + 59) and not entry.is_fresh(clock.now + 60)
    assert entry.validators is not None and entry.validators.headers() == {
        "If-None-Match": '"a"',
        "If-Modified-Since": DATE,
    }
    assert cache.lookup("http://example.test/other.png") is None


def test_uncacheable_answers_are_not_kept(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache")
    assert cache.store("http://x.test/a", fetched(tmp_path, b"a", {"cache-control": "no-store"})) is None
    assert cache.store("http://x.test/b", fetched(tmp_path, b"b", {"cache-control": "private"})) is None
    small = MediaCache(tmp_path / "small", max_bytes=4)
    assert small.store("http://x.test/c", fetched(tmp_path, b"too big")) is None
    assert cache.lookup("http://x.test/a") is None and cache.total_bytes == small.total_bytes == 0


def test_same_bytes_share_one_blob(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache")
    one = cache.store("http://one.test/a.png", fetched(tmp_path, b"same bytes", name="one"))
    two = cache.store("http://two.test/b.png", fetched(tmp_path, b"same bytes", name="two"))
    assert one is not None and two is not None and one.path == two.path
    assert cache.total_bytes == len(b"same bytes")
    assert [p.name for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()] == [one.sha256]


def test_materialize_gives_a_private_link_that_outlives_eviction(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10)
    entry = cache.store("http://x.test/a", fetched(tmp_path, b"aaaaaaaa"))
    assert entry is not None
    work = tmp_path / "work"
    work.mkdir()
    copy = cache.materialize(entry, work / "reference1.png")
    assert copy == work / "reference1.png" and copy.read_bytes() == b"aaaaaaaa"
    cache.store("http://x.test/b", fetched(tmp_path, b"bbbbbbbb"))  # evicts a
    assert cache.lookup("http://x.test/a") is None and not entry.path.exists()
    assert copy.read_bytes() == b"aaaaaaaa"
    assert cache.materialize(entry, work / "again.png") is None  # gone: the caller downloads


def test_least_recently_used_blobs_go_first(tmp_path: Path) -> None:
    clock = Clock()
    cache = MediaCache(tmp_path / "cache", max_bytes=25, clock=clock)
    entries = {}
    for name in "abc":
        clock.now += 1
        entries[name] = cache.store(f"http://x.test/{name}", fetched(tmp_path, name.encode() * 10))
    assert cache.lookup("http://x.test/a") is None  # 30 bytes > 25: the oldest went
    clock.now += 1
    cache.materialize(entries["b"], tmp_path / "use-b")  # b is now the most recent
    clock.now += 1
    cache.store("http://x.test/d", fetched(tmp_path, b"d" * 10))
    assert [name for name in "abcd" if cache.lookup(f"http://x.test/{name}")] == ["b", "d"]
    assert cache.total_bytes == 20
    assert len([p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]) == 2


def test_refresh_after_304_extends_freshness(tmp_path: Path) -> None:
    clock = Clock()
    cache = MediaCache(tmp_path / "cache", clock=clock)
    cache.store("http://x.test/a", fetched(tmp_path, b"a", {"etag": '"1"', "cache-control": "max-age=10"}))
    clock.now += 100
    stale = cache.lookup("http://x.test/a")
    assert stale is not None and not stale.is_fresh(clock.now)
    fresh = cache.refresh("http://x.test/a", {"cache-control": "max-age=30", "etag": '"2"'})
    assert fresh is not None and fresh.is_fresh(clock.now + 29) and not fresh.is_fresh(clock.now + 30)
    assert fresh.etag == '"2"'
    assert cache.refresh("http://x.test/a", {"cache-control": "no-store"}) is None
    assert cache.lookup("http://x.test/a") is None


def test_a_304_without_freshness_rules_keeps_the_copy_revalidating(tmp_path: Path) -> None:
    """A no-cache answer, then a 304 that repeats only the ETag: the copy is reused, but the
    next use must ask the server again rather than trust it for the default hour."""
    clock = Clock()
    cache = MediaCache(tmp_path / "cache", clock=clock)
    cache.store("http://x.test/a", fetched(tmp_path, b"a", {"etag": '"1"', "cache-control": "no-cache"}))
    refreshed = cache.refresh("http://x.test/a", {"etag": '"1"'})
    assert refreshed is not None and not refreshed.is_fresh(clock.now + 1)


def test_a_new_body_for_a_url_replaces_the_old(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache")
    cache.store("http://x.test/a", fetched(tmp_path, b"version 1"))
    entry = cache.store("http://x.test/a", fetched(tmp_path, b"version 2"))
    assert entry is not None and entry.path.read_bytes() == b"version 2"


@pytest.mark.parametrize("max_bytes", [1000, 120])  # room for all; constant eviction
def test_many_threads_share_one_cache(tmp_path: Path, max_bytes: int) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=max_bytes)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                content = f"blob {i % 10:02d}".encode() * 5  # 10 distinct blobs of 35 bytes
                entry = cache.store(f"http://x.test/{worker}/{i}", fetched(tmp_path, content, name=f"{worker}-{i}"))
                assert entry is not None
                copy = cache.materialize(entry, tmp_path / f"copy-{worker}-{i}")
                assert copy is None or copy.read_bytes() == content
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_consistent(tmp_path / "cache")
    # Deduplicated: ten blobs at most, however many URLs.
    assert cache.total_bytes == 350 if max_bytes == 1000 else 0 < cache.total_bytes <= max_bytes


def _store_from_process(root: str, worker: int) -> None:
    cache = MediaCache(Path(root), max_bytes=300)
    scratch = Path(root).parent / f"proc-{worker}"
    scratch.mkdir(exist_ok=True)
    for i in range(30):
        content = f"process blob {i:03d}".encode() * 2
        cache.store(f"http://x.test/p{worker}/{i}", fetched(scratch, content, name=str(i)))
        cache.lookup(f"http://x.test/p{1 - worker}/{i}")


def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    MediaCache(root)
    context = multiprocessing.get_context()
    processes = [context.Process(target=_store_from_process, args=(str(root), n)) for n in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [process.exitcode for process in processes] == [0, 0]
    assert_consistent(root)
    assert 0 < MediaCache(root, max_bytes=300).total_bytes <= 300


def assert_consistent(root: Path) -> None:
    """Every indexed blob is on disk, whole; every file on disk is indexed; no temp is left."""
    db = sqlite3.connect(root / "index.sqlite3")
    blobs = dict(db.execute("SELECT sha256, size FROM blobs"))
    dangling = db.execute("SELECT COUNT(*) FROM urls WHERE sha256 NOT IN (SELECT sha256 FROM blobs)").fetchone()[0]
    db.close()
    on_disk = {p.name: p for p in (root / "blobs").rglob("*") if p.is_file()}
    assert set(on_disk) == set(blobs)
    assert dangling == 0
    for sha256, path in on_disk.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256 and path.stat().st_size == blobs[sha256]
    assert not list((root / "tmp").iterdir())
