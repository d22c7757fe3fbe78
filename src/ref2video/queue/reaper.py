"""The reaper: tasks whose holder stopped renewing its lease go back to the queue (or fail,
once their attempts are spent), so a crashed process never strands work."""

from __future__ import annotations

import logging

from ..periodic import Periodic
from .manager import QueueManager

__all__ = ["Reaper"]

log = logging.getLogger(__name__)


class Reaper(Periodic):
    """`Reaper(manager, interval).start()`. Run it where tasks run: on SQLite the wake-up a
    requeue sends reaches only this process's own workers."""

    def __init__(self, manager: QueueManager, interval: float) -> None:
        super().__init__("reaper", self.reap, interval)
        self.manager = manager

    def reap(self) -> tuple[int, int]:
        requeued, failed = self.manager.reap()
        if requeued or failed:
            log.warning("reaped lapsed leases: %d requeued, %d failed", requeued, failed)
        return requeued, failed
