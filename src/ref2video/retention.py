"""The retention sweep: tasks, result files, uploads and scratch leftovers past their time."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sqlalchemy import Engine

from .storage.base import Storage
from .store import tasks as task_store
from .store import uploads as upload_store

__all__ = ["Sweeper"]


class Sweeper:
    """`Sweeper(...).sweep()` removes what is past retention; files go before their rows, so a
    crash mid-sweep leaves rows to sweep again, never files nobody knows of."""

    def __init__(self, db: Engine, results: Storage, uploads: Storage, scratch_dir: Path, retention_ms: int) -> None:
        self.db = db
        self.results = results
        self.uploads = uploads
        self.scratch_dir = scratch_dir
        self.retention_ms = retention_ms

    def sweep(self) -> int:
        """Returns how many tasks and uploads went."""
        removed = 0
        while expired := task_store.expired_tasks(self.db, self.retention_ms):
            for _task_id, key in expired:
                if key:
                    self.results.delete(key)
            task_store.delete_tasks(self.db, [task_id for task_id, _ in expired])
            removed += len(expired)
        while old := upload_store.expired_uploads(self.db, self.retention_ms):
            for _key, blob in old:
                self.uploads.delete(blob)
            upload_store.delete_uploads(self.db, [key for key, _ in old])
            removed += len(old)
        cutoff = time.time() - self.retention_ms / 1000
        for leftover in self.scratch_dir.glob("*"):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        return removed
