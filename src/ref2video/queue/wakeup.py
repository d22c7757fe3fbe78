"""Waking idle workers the moment there is work, instead of on a polling sleep.

In one process an event does it. Across processes on PostgreSQL, LISTEN/NOTIFY does it: a
notification sent inside the creating transaction arrives when that transaction commits.
SQLite has no such channel, so a worker in another process falls back to `poll_interval`.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text

from ..store.db import is_postgres

__all__ = ["Wakeup", "CHANNEL"]

CHANNEL = "ref2video_tasks"
log = logging.getLogger(__name__)


class Wakeup:
    """`notify()` after making work claimable; workers `wait()` when they found none."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._event = threading.Event()
        self._subscribers: list[threading.Event] = []
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    def notify(self) -> None:
        """Wake workers here and, on PostgreSQL, in other processes."""
        if is_postgres(self.engine):
            with self.engine.begin() as conn:
                self.notify_in(conn)
        self.wake_local()

    def notify_in(self, conn: Connection) -> None:
        """Inside a transaction that makes work: other processes hear of it when it commits.
        Call `wake_local()` after the commit, so local workers do not look too early."""
        if is_postgres(self.engine):
            conn.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})

    def wake_local(self) -> None:
        self._event.set()
        for event in self._subscribers:
            event.set()

    def subscribe(self) -> threading.Event:
        """An event of one's own that every wake-up sets: a waiter that clears it cannot
        swallow a wake-up meant for the workers, nor they one meant for it."""
        event = threading.Event()
        self._subscribers.append(event)
        return event

    def clear(self) -> None:
        """Call before looking for work, so a notification during the look is not lost."""
        self._event.clear()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)

    def start_listening(self) -> None:
        """On PostgreSQL, relay other processes' notifications to this process's workers."""
        if is_postgres(self.engine) and self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="ref2video-listen", daemon=True)
            self._listener.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wake_local()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                raw = self.engine.raw_connection()
                try:
                    pg = raw.driver_connection
                    assert pg is not None
                    pg.autocommit = True
                    pg.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        for _ in pg.notifies(timeout=1.0, stop_after=1):
                            self.wake_local()
                finally:
                    raw.invalidate()  # a LISTENing connection must not go back to the pool
            except Exception:
                log.warning("lost the PostgreSQL notification channel; reconnecting", exc_info=True)
                self.wake_local()  # look for work we may have missed
                self._stopping.wait(1.0)
