"""New tasks from the API, inserted by one thread in batches (group commit).

A create awaited on the event loop hands its task to `Creates.add` and waits. One thread takes
every create that has arrived since its last commit and inserts them all in one transaction
(`transitions.create` for each, then `on_insert` once: the queue's wake-up on PostgreSQL). So a
burst of creates pays for one commit and one wake-up of the loop, not one of each per create,
and on SQLite the API's writes never queue in its busy handler, which sleeps in steps.

A batch that fails is tried again one create at a time, each in its own transaction, so every
create gets its own answer: its task, or the error that it alone met. The thread ends after a
few idle seconds and starts again with the next create; `close()` ends it for good (an
engine's disposal does), after which a create runs in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from anyio import to_thread
from sqlalchemy import Connection, Engine, event

from ..spec import TaskSpec
from ..store.keys import Principal
from ..store.tasks import TaskRecord
from . import transitions

__all__ = ["Creates", "creates_for"]

log = logging.getLogger(__name__)

_IDLE_S = 5.0  # the thread ends after this long without a create
_MAX_BATCH = 256  # creates per transaction at most

_Item = tuple[TaskSpec, Principal, "asyncio.Future[TaskRecord]"]


class Creates:
    """`await Creates(db, ...).add(spec, principal)`: the new PENDING task, committed."""

    def __init__(self, db: Engine, *, write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext(),
                 on_insert: Callable[[Connection], None] | None = None) -> None:
        self.db = db
        self.write_lock = write_lock
        self.on_insert = on_insert
        self._queue: list[_Item] = []
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._idle = False  # the thread waits on _cond for work
        self._closed = False

    async def add(self, spec: TaskSpec, principal: Principal) -> TaskRecord:
        future: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._closed:
                return await to_thread.run_sync(self._one_by_itself, spec, principal)
            self._queue.append((spec, principal, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ref2video-creates", daemon=True)
                self._thread.start()
            elif self._idle:
                self._cond.notify()
        return await future

    def close(self) -> None:
        """Insert what is queued, then stop the thread; later creates each run in a thread."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._idle = True
                    woken = self._cond.wait(_IDLE_S)
                    self._idle = False
                    if not woken and not self._queue:
                        self._thread = None  # the next create starts another
                        return
                if not self._queue:  # closed, and nothing left
                    self._thread = None
                    return
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            _settle(self._insert(batch))

    def _insert(self, batch: list[_Item]) -> list[tuple[asyncio.Future[TaskRecord], TaskRecord | None, BaseException | None]]:
        try:
            with self.write_lock, self.db.begin() as conn:
                made = [transitions.create(conn, spec, principal) for spec, principal, _ in batch]
                if self.on_insert is not None:
                    self.on_insert(conn)
            return [(future, task, None) for (_, _, future), task in zip(batch, made, strict=True)]
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0][2], None, exc)]
        answers: list[tuple[asyncio.Future[TaskRecord], TaskRecord | None, BaseException | None]] = []
        for spec, principal, future in batch:
            try:
                answers.append((future, self._one_by_itself(spec, principal), None))
            except Exception as exc:
                answers.append((future, None, exc))
        return answers

    def _one_by_itself(self, spec: TaskSpec, principal: Principal) -> TaskRecord:
        with self.write_lock, self.db.begin() as conn:
            task = transitions.create(conn, spec, principal)
            if self.on_insert is not None:
                self.on_insert(conn)
        return task


def _settle(answers: list[tuple[asyncio.Future[TaskRecord], TaskRecord | None, BaseException | None]]) -> None:
    """Hand the answers to their event loops: one wake-up per loop and batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].get_loop(), []).append(answer)
    for loop, some in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_set_all, some)


def _set_all(answers: list[tuple[asyncio.Future[TaskRecord], TaskRecord | None, BaseException | None]]) -> None:
    for future, task, error in answers:
        if future.done():  # the request was given up (its client left); the task exists all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(task)  # type: ignore[arg-type]


_by_engine: weakref.WeakKeyDictionary[Engine, Creates] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def creates_for(db: Engine, *, write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext(),
                on_insert: Callable[[Connection], None] | None = None) -> Creates:
    """The engine's one `Creates` (made on first use with these settings; closed when the
    engine is disposed)."""
    creates = _by_engine.get(db)
    if creates is None:
        with _by_engine_lock:
            creates = _by_engine.get(db)
            if creates is None:
                creates = _by_engine[db] = Creates(db, write_lock=write_lock, on_insert=on_insert)
                event.listen(db, "engine_disposed", lambda _engine: _dispose(_engine))
    return creates


def _dispose(db: Engine) -> None:
    with _by_engine_lock:
        creates = _by_engine.pop(db, None)
    if creates is not None:
        creates.close()
