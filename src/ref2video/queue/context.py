"""The running task's side of the worker: progress in, cancellation out."""

from __future__ import annotations

import threading
import time

from ..errors import TaskCanceled
from .manager import Claim

__all__ = ["TaskContext"]


class TaskContext:
    """Handed to `Engine.generate`. Engines only set progress and read flags here; the
    worker's lease keeper thread does the database work, so an engine never waits on it."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.progress = 0
        self.reported = -1  # the progress the keeper last wrote
        self.last_renewed = time.monotonic()
        self.cancel_requested = False
        self.shutting_down = False
        self.lease_lost = False
        self.changed = threading.Event()

    def report_step(self, step: int, total: int) -> None:
        """Progress as steps done of `total`; capped at 99 until the result is stored."""
        if total > 0:
            self.progress = max(self.progress, min(99, int(100 * step / total)))

    def should_cancel(self) -> bool:
        return self.cancel_requested or self.shutting_down or self.lease_lost

    def raise_if_canceled(self) -> None:
        if self.should_cancel():
            raise TaskCanceled()
