"""The retention sweep: tasks, result files, uploads and scratch leftovers past their time, then
stored files that no row names (orphans) once they are past a grace period."""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from .app import idempotency, transitions
from .storage.base import Storage
from .store import tasks as task_store
from .store import uploads as upload_store

__all__ = ["Sweeper", "ORPHAN_BATCH"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ORPHAN_BATCH = 500  # stored names checked against the database per query


class Sweeper:
    """`Sweeper(...).sweep()` removes what is past retention; files go before their rows, so a
    crash mid-sweep leaves rows to sweep again. A crash between storing a file and recording
    it leaves a file nobody knows of: `sweep_orphans` removes those."""

    def __init__(self, db: Engine, results: Storage, uploads: Storage, scratch_dir: Path, retention_ms: int,
                 *, orphan_grace_seconds: float = 3600.0) -> None:
        self.db = db
        self.results = results
        self.uploads = uploads
        self.scratch_dir = scratch_dir
        self.retention_ms = retention_ms
        self.orphan_grace_seconds = orphan_grace_seconds

    def sweep(self) -> int:
        """Returns how many tasks and uploads went; orphaned files are counted and logged by
        `sweep_orphans`."""
        removed = 0
        while expired := self._read(task_store.expired_tasks, self.retention_ms):
            for _task_id, key in expired:
                if key:
                    self.results.delete(key)
            with self.db.begin() as conn:
                transitions.expire(conn, [task_id for task_id, _ in expired])
            removed += len(expired)
        while old := self._read(upload_store.expired_uploads, self.retention_ms):
            for _key, blob in old:
                self.uploads.delete(blob)
            with self.db.begin() as conn:
                upload_store.delete_uploads(conn, [key for key, _ in old])
            removed += len(old)
        with self.db.begin() as conn:  # idempotency keys past their life (they may be used again)
            idempotency.sweep(conn, self.retention_ms)
        cutoff = time.time() - self.retention_ms / 1000
        for leftover in self.scratch_dir.glob("*"):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        self.sweep_orphans()
        return removed

    def sweep_orphans(self) -> int:
        """Remove stored files older than the grace that no row names, and partial files older
        than the grace; returns how many went."""
        results = self._sweep_storage(self.results, task_store.owned_result_keys)
        uploads = self._sweep_storage(self.uploads, upload_store.owned_blobs)
        if results or uploads:
            log.warning("removed %d result files and %d upload files that nothing named (older than %g s)",
                        results, uploads, self.orphan_grace_seconds)
        return results + uploads

    def _read(self, query: Callable[[Connection, Any], T], arg: Any) -> T:
        with self.db.connect() as conn:
            return query(conn, arg)

    def _sweep_storage(self, storage: Storage, owned: Callable[[Connection, Collection[str]], set[str]]) -> int:
        # A file is nobody's from `storage.put` until its row is written (a task's compare-and-set,
        # an upload's insert). Only files older than the grace are touched, so the grace must be
        # longer than that gap (seconds at most; the default is an hour). A partial file being
        # written is young too: every write renews its modified time.
        cutoff = time.time() - self.orphan_grace_seconds
        old = (item for item in storage.listing() if item.modified < cutoff)
        removed = 0
        while batch := list(itertools.islice(old, ORPHAN_BATCH)):
            kept = self._read(owned, [item.name for item in batch if not item.partial])
            for item in batch:
                if item.partial or item.name not in kept:
                    storage.discard(item)
                    removed += 1
        return removed
