"""New tasks from the API, inserted in batches (group commit).

A create awaited on the event loop hands its task to `Creates.add` and waits. The creates that
reach `add` in one turn of the loop are inserted together, in one transaction and one statement
(`transitions.create_many`, then `on_insert` once: the queue's wake-up on PostgreSQL), so a
burst of creates pays for one statement and one commit, not one of each per create:

- on SQLite, on the event loop itself, through the thread's own connection
  (`store.db.loop_connection`), which never waits for a lock: when the in-process write lock or
  SQLite's is held, the batch goes to the thread instead. The WAL is checkpointed in a thread
  every few hundred such commits, as the loop's connection does not do it.
- otherwise (and for those batches) by one thread, which takes every batch that has arrived
  since its last commit (on PostgreSQL in psycopg's pipeline mode: two round trips a batch,
  one for the statements and one for the commit). On SQLite the API's creates thus wait for
  each other on the write lock, not in SQLite's busy handler, which sleeps in steps.

A create may bring more to do in its transaction (`add(..., then=...)`: the hold of its largest
cost when billing is on, the owner's unfinished-task quota): that runs in the batch's
transaction after the insert, for the batch's creates in the order of their owners (so that two
batches lock accounts in one order). A batch that fails in the thread before its commit (an
owner in arrears, over a quota) is tried again one create at a time, each in its own
transaction, so every create gets its own answer: its task, or the error that it alone met (a
failed commit is not tried again: it may have happened after all). The
thread ends after a few idle seconds and starts again with the next batch; `close()` ends it
for good (an engine's disposal does), after which a create runs in a thread of its own.
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
from ..store.db import checkpoint, drop_loop_connection, is_postgres, loop_connection
from ..store.keys import Principal
from ..store.tasks import TaskRecord
from . import observe, transitions

__all__ = ["Creates", "Then", "creates_for"]

log = logging.getLogger(__name__)

_NO_LOCK = contextlib.nullcontext()  # reusable: it holds nothing
_IDLE_S = 5.0  # the thread ends after this long without a batch
_MAX_BATCH = 256  # creates per transaction at most
_CHECKPOINT_EVERY = 200  # commits on the loop between two WAL checkpoints
_PG_THREADS = 2  # batches committing at once on PostgreSQL

Then = Callable[[Connection, TaskRecord], None]  # more of a create's work, in its transaction
_Item = tuple[TaskSpec, Principal, "asyncio.Future[TaskRecord]", Then | None]
_Answer = tuple["asyncio.Future[TaskRecord]", TaskRecord | None, BaseException | None]


class Creates:
    """`await Creates(db, ...).add(spec, principal)`: the new PENDING task, committed."""

    def __init__(self, db: Engine, *, write_lock: contextlib.AbstractContextManager[object] = _NO_LOCK,
                 on_insert: Callable[[Connection], None] | None = None) -> None:
        self.db = db
        self.write_lock = write_lock
        self.on_insert = on_insert
        self.on_loop = not is_postgres(db)
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Item]] = {}  # this turn's, by loop
        self._queue: list[_Item] = []  # handed to the thread
        self._cond = threading.Condition(threading.Lock())
        # PostgreSQL: a few threads, so that one batch's commit (a WAL flush) need not wait
        # for the one before it; SQLite has one writer at a time anyway.
        self._most_threads = _PG_THREADS if is_postgres(db) else 1
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting on _cond for work
        self._closed = False
        self._loop_commits = 0
        self._checkpointing = False
        self._late: set[asyncio.Future[None]] = set()  # creates after close(), each in a thread

    async def add(self, spec: TaskSpec, principal: Principal, then: Then | None = None) -> TaskRecord:
        if self._closed:
            return await to_thread.run_sync(self._one_by_itself, spec, principal, then)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskRecord] = loop.create_future()
        pending = self._gathering.get(loop)
        if pending is None:
            pending = self._gathering[loop] = []
            loop.call_soon(self._turn_done, loop)
        pending.append((spec, principal, future, then))
        return await future

    def close(self) -> None:
        """Insert what is queued, then stop the thread; later creates each run in a thread."""
        with self._cond:
            self._closed = True
            threads = list(self._threads)
            self._cond.notify_all()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(30)

    # -- on the loop

    def _turn_done(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, [])
        if not batch:
            return
        if self.on_loop and not self._closed:
            answers = self._insert_on_loop(batch)
            if answers is not None:
                _set_all(answers)
                return
        self._hand_over(batch)

    def _insert_on_loop(self, batch: list[_Item]) -> list[_Answer] | None:
        """The batch in one transaction on this thread's connection; None when a lock is held
        (or anything else went wrong), for the thread to do it (and report what fails)."""
        lock: Any = self.write_lock
        exclusive = hasattr(lock, "acquire")
        if exclusive and not lock.acquire(blocking=False):
            return None
        try:
            conn = None
            try:
                conn = loop_connection(self.db)
                with conn.begin():
                    made = self._create_all(conn, batch)
                    self._then_all(conn, batch, made)
            except Exception:  # a lock held (or worse): the thread does it, and reports what fails
                if conn is not None and (conn.invalidated or conn.in_transaction()):
                    drop_loop_connection(self.db)
                return None
        finally:
            if exclusive:
                lock.release()
        observe.created([task.id for task in made])
        self._loop_commits += 1
        if self._loop_commits % _CHECKPOINT_EVERY == 0 and not self._checkpointing:
            self._checkpointing = True
            try:
                asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
            except RuntimeError:  # the loop is shutting down: the next one checkpoints
                self._checkpointing = False
        return [(future, task, None) for (_, _, future, _), task in zip(batch, made, strict=True)]

    def _create_all(self, conn: Connection, batch: list[_Item]) -> list[TaskRecord]:
        made = transitions.create_many(conn, [(spec, principal) for spec, principal, _, _ in batch])
        if self.on_insert is not None:
            self.on_insert(conn)
        return made

    @staticmethod
    def _then_all(conn: Connection, batch: list[_Item], made: list[TaskRecord]) -> None:
        """Each create's further work, owner by owner (so two batches lock accounts in one order)."""
        for _, n in sorted((item[1].owner, n) for n, item in enumerate(batch) if item[3] is not None):
            then = batch[n][3]
            assert then is not None
            then(conn, made[n])

    def _checkpoint(self) -> None:
        try:
            checkpoint(self.db)
        except Exception:
            log.warning("could not checkpoint the SQLite WAL", exc_info=True)
        finally:
            self._checkpointing = False

    def _hand_over(self, batch: list[_Item]) -> None:
        with self._cond:
            if self._closed:
                for spec, principal, future, then in batch:
                    task = asyncio.ensure_future(self._later_by_itself(spec, principal, future, then))
                    self._late.add(task)
                    task.add_done_callback(self._late.discard)
                return
            self._queue.extend(batch)
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self._most_threads:
                thread = threading.Thread(target=self._run, name="ref2video-creates", daemon=True)
                self._threads.add(thread)
                thread.start()

    async def _later_by_itself(self, spec: TaskSpec, principal: Principal, future: asyncio.Future[TaskRecord],
                               then: Then | None) -> None:
        try:
            task = await to_thread.run_sync(self._one_by_itself, spec, principal, then)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(task)

    # -- in the thread

    def _run(self) -> None:
        held = _Held(self.db)  # this thread's connection, kept from batch to batch
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._idle += 1
                        woken = self._cond.wait(_IDLE_S)
                        self._idle -= 1
                        if not woken and not self._queue:
                            self._threads.discard(threading.current_thread())  # batches start others
                            return
                    if not self._queue:  # closed, and nothing left
                        self._threads.discard(threading.current_thread())
                        return
                    batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                _settle(self._insert(batch, held))
        finally:
            # Closed: the engine is being disposed, and its pool with it; a connection handed
            # back now would stay open in the pool that replaces it.
            held.let_go(discard=self._closed)

    def _insert(self, batch: list[_Item], held: _Held) -> list[_Answer]:
        with self.write_lock:
            try:
                conn = held.get()
                transaction = conn.begin()
                try:
                    # PostgreSQL: the insert and the wake-up in psycopg's pipeline mode, one round
                    # trip for both and the BEGIN (an error surfaces as the pipeline ends).
                    driver: Any = conn.connection.driver_connection
                    with driver.pipeline() if is_postgres(self.db) else contextlib.nullcontext():
                        made = self._create_all(conn, batch)
                    self._then_all(conn, batch, made)  # (reads their answers: not in the pipeline)
                except BaseException:
                    transaction.rollback()
                    raise
            except Exception:
                made = None
                held.let_go()
            else:
                try:
                    transaction.commit()
                except Exception as exc:  # whether it was committed is not known: no second try
                    held.let_go()
                    return [(future, None, exc) for _, _, future, _ in batch]
                observe.created([task.id for task in made or ()])
        if made is None:
            # Nothing was committed: each create again, on its own, on a fresh (pinged)
            # connection, so that each gets its own answer.
            return [self._alone(*item) for item in batch]
        return [(future, task, None) for (_, _, future, _), task in zip(batch, made, strict=True)]

    def _alone(self, spec: TaskSpec, principal: Principal, future: asyncio.Future[TaskRecord],
               then: Then | None) -> _Answer:
        try:
            return (future, self._one_by_itself(spec, principal, then), None)
        except Exception as exc:
            return (future, None, exc)

    def _one_by_itself(self, spec: TaskSpec, principal: Principal, then: Then | None = None) -> TaskRecord:
        with self.write_lock, self.db.begin() as conn:
            task = transitions.create(conn, spec, principal)
            if then is not None:
                then(conn, task)
            if self.on_insert is not None:
                self.on_insert(conn)
        observe.created([task.id])
        return task


class _Held:
    """The batching thread's connection: checked out (and pinged) once, not for every batch."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        self.conn: Connection | None = None

    def get(self) -> Connection:
        if self.conn is None:
            self.conn = self.db.connect()
        return self.conn

    def let_go(self, *, discard: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if discard:
                    conn.invalidate()
                conn.close()


def _settle(answers: list[_Answer]) -> None:
    """Hand the thread's answers to their event loops: one wake-up per loop and batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].get_loop(), []).append(answer)
    for loop, some in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_set_all, some)


def _set_all(answers: list[_Answer]) -> None:
    for future, task, error in answers:
        if future.done():  # the request was given up (its client left); the task exists all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(task)  # type: ignore[arg-type]


_by_engine: weakref.WeakKeyDictionary[Engine, Creates] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def creates_for(db: Engine, *, write_lock: contextlib.AbstractContextManager[object] = _NO_LOCK,
                on_insert: Callable[[Connection], None] | None = None) -> Creates:
    """The engine's one `Creates` (made on first use with these settings; closed when the
    engine is disposed)."""
    creates = _by_engine.get(db)
    if creates is None:
        with _by_engine_lock:
            creates = _by_engine.get(db)
            if creates is None:
                creates = _by_engine[db] = Creates(db, write_lock=write_lock, on_insert=on_insert)
                event.listen(db, "engine_disposed", _dispose)
    return creates


def _dispose(db: Engine) -> None:
    with _by_engine_lock:
        creates = _by_engine.pop(db, None)
    if creates is not None:
        creates.close()
