"""The retention sweep's orphan pass: stored files that no task or upload names, and leftovers
of a crashed `put`, go once they are older than the grace; a file some row owns, or one written
within the grace, stays. Real databases (SQLite and PostgreSQL), real files, real crashes."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event

from ref2video.queue.manager import QueueManager
from ref2video.retention import ORPHAN_BATCH, Sweeper
from ref2video.spec import TaskSpec
from ref2video.storage.local import LocalStorage
from ref2video.app import tasks as app_tasks
from ref2video.app import uploads as upload_store
from ref2video.store.db import make_engine, migrate
from ref2video.store.keys import Principal
from tests.live import LiveServer
from tests.storage.crash import put_killed_before_rename

OWNER = Principal(key_id="k", owner="o")
PAST_GRACE = time.time() - 2 * 3600  # the default grace is an hour


@dataclasses.dataclass
class Stores:
    db: Engine
    results: LocalStorage
    uploads: LocalStorage
    sweeper: Sweeper
    source: Path  # bytes to store


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[Stores]:
    db = make_engine(database_url)
    migrate(db)
    results, uploads = LocalStorage(tmp_path / "results"), LocalStorage(tmp_path / "uploads")
    source = tmp_path / "video.mp4"
    source.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    sweeper = Sweeper(db, results, uploads, tmp_path / "scratch", retention_ms=24 * 3600 * 1000)
    yield Stores(db, results, uploads, sweeper, source)
    db.dispose()


def aged(path: Path, when: float = PAST_GRACE) -> Path:
    os.utime(path, (when, when))
    return path


def crashed_put(storage: LocalStorage, key: str, source: Path) -> Path:
    """The partial file a process killed inside `put` leaves behind."""
    before = {item.name for item in storage.listing()}
    put_killed_before_rename(storage.root, key, source)
    (name,) = {item.name for item in storage.listing() if item.partial} - before
    return storage.root / name


def succeeded_task(stores: Stores, key: str) -> str:
    """A task that stored `key` and recorded it, as a worker does."""
    spec = TaskSpec(model="m", prompt="p", reference_urls=("https://x.test/a.png",))
    task = app_tasks.create(stores.db, spec, OWNER, retention_ms=86_400_000)
    manager = QueueManager(stores.db)
    claim = manager.claim(["m"])
    assert claim is not None and claim.task.id == task.id
    stores.results.put(key, stores.source)
    assert manager.succeed(claim, result_key=key, usage={}, engine="e")
    return task.id


def names(storage: LocalStorage) -> list[str]:
    return sorted(path.name for path in storage.root.iterdir())


def test_result_files_no_task_names_are_swept_once_past_the_grace(stores: Stores) -> None:
    succeeded_task(stores, "live.mp4")
    aged(stores.results.root / "live.mp4")
    # A worker killed after `put` and before its compare-and-set: a file nobody names.
    stores.results.put("stray.mp4", stores.source)
    aged(stores.results.root / "stray.mp4")
    # One killed inside `put`, and a partial left by an earlier version (`<key>.partial`).
    aged(crashed_put(stores.results, "cut.mp4", stores.source))
    (stores.results.root / "old.mp4.partial").write_bytes(b"half")
    aged(stores.results.root / "old.mp4.partial")
    # A worker that has just stored its result and is about to record it, and one mid-put.
    stores.results.put("fresh.mp4", stores.source)
    fresh_partial = crashed_put(stores.results, "writing.mp4", stores.source)

    stores.sweeper.sweep()

    assert names(stores.results) == sorted([fresh_partial.name, "fresh.mp4", "live.mp4"])
    assert stores.sweeper.sweep_orphans() == 0  # nothing more to do


def test_upload_blobs_no_upload_names_are_swept_once_past_the_grace(stores: Stores) -> None:
    stores.uploads.put("recorded.png", stores.source)
    assert upload_store.record_upload(stores.db, OWNER, key="ref2video-uploads/x/a.png", blob="recorded.png",
                                      size=108, content_type="image/png")
    aged(stores.uploads.root / "recorded.png")
    stores.uploads.put("stray.png", stores.source)  # stored, and the process died before the row
    aged(stores.uploads.root / "stray.png")
    aged(crashed_put(stores.uploads, "cut.png", stores.source))
    stores.uploads.put("fresh.png", stores.source)

    assert stores.sweeper.sweep_orphans() == 2

    assert names(stores.uploads) == ["fresh.png", "recorded.png"]


def test_ownership_is_asked_once_per_batch_of_names(stores: Stores) -> None:
    owned = [f"owned-{i}.mp4" for i in (0, ORPHAN_BATCH + 7, 2 * ORPHAN_BATCH + 1)]
    for key in owned:
        succeeded_task(stores, key)
    strays = 2 * ORPHAN_BATCH + 10
    for i in range(strays):
        (stores.results.root / f"stray-{i}.mp4").write_bytes(b"video")
    for path in stores.results.root.iterdir():
        aged(path)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(stores.db, "before_cursor_execute", seen)
    try:
        assert stores.sweeper.sweep_orphans() == strays
    finally:
        event.remove(stores.db, "before_cursor_execute", seen)
    assert names(stores.results) == sorted(owned)
    files = strays + len(owned)
    assert len([s for s in statements if "result_key IN" in s]) == -(-files // ORPHAN_BATCH)  # ceil


def test_the_configured_grace_reaches_the_sweep_of_a_live_server(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(orphan_grace_seconds=60, storage="local")  # the sweep of the local disk
    task_id = server.create()
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "SUCCEEDED"
    storage = server.service.storage
    assert isinstance(storage, LocalStorage)
    (key,) = names(storage)
    aged(storage.root / key, time.time() - 120)
    storage.put("stray.mp4", storage.root / key)
    aged(storage.root / "stray.mp4", time.time() - 120)
    storage.put("young.mp4", storage.root / key)
    aged(storage.root / "young.mp4", time.time() - 30)

    server.service.sweeper.sweep()

    assert names(storage) == sorted([key, "young.mp4"])
    assert httpx.get(out["video_url"]).status_code == 200
