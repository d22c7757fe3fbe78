"""`Periodic`: work run every few seconds on a thread of its own, until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work()` every `interval` seconds (first after one interval) until `stop()`; an
    error is logged and the work runs again at the next turn."""

    def __init__(self, name: str, work: Callable[[], object], interval: float) -> None:
        self.name = name
        self.work = work
        self.interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ref2video-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.work()
            except Exception:
                log.exception("%s failed; will try again", self.name)
