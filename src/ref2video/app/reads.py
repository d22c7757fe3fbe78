"""Polls on PostgreSQL, awaited on the event loop and sent to the database together.

Each poll costs a round trip, and each awaited round trip costs the event loop more than the
statement itself (psycopg waits for every answer with its own reader callback, timer and
future). So the polls that reach `Polls.get` in one turn of the loop go out together, as one
statement on one pooled connection (`store.tasks.LOOKUP_MANY`: the (task id, owner) pairs as
two arrays, one row per task found); a single poll goes out alone (`LOOKUP`). If that fails (a
connection lost, say), every poll in it is told so (`psycopg.Error`), and `app.tasks.get` reads
it the ordinary way.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from sqlalchemy import Engine

from ..store.db import loop_pool
from ..store.tasks import Lookup, TaskRecord, lookup_task_async, lookup_tasks_async

__all__ = ["Polls", "polls_for"]

_Poll = tuple[Lookup, str, str, int, "asyncio.Future[TaskRecord | None]"]


class Polls:
    """`await Polls(db).get(lookup, owner, task_id, retention_ms)`: `store.tasks.get_task`."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Poll]] = {}
        self._running: set[asyncio.Task[None]] = set()  # the batches under way (kept from the GC)

    async def get(self, lookup: Lookup, owner: str, task_id: str, retention_ms: int) -> TaskRecord | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskRecord | None] = loop.create_future()
        batch = self._gathering.get(loop)
        if batch is None:
            batch = self._gathering[loop] = []
            loop.call_soon(self._turn_done, loop)
        batch.append((lookup, owner, task_id, retention_ms, future))
        return await future

    def _turn_done(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, [])
        if batch:
            task = loop.create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[_Poll]) -> None:
        try:
            pool = await loop_pool(self.db)
            conn = await pool.getconn()
            try:
                if len(batch) == 1:
                    lookup, owner, task_id, retention_ms, future = batch[0]
                    _answer(future, await lookup_task_async(conn, lookup, owner, task_id, retention_ms))
                    return
                groups: dict[tuple[Lookup, int], list[_Poll]] = {}  # in practice one: a service's
                for poll in batch:
                    groups.setdefault((poll[0], poll[3]), []).append(poll)
                for (lookup, retention_ms), polls in groups.items():
                    asked = [(owner, task_id) for _, owner, task_id, _, _ in polls]
                    found = await lookup_tasks_async(conn, lookup, asked, retention_ms)
                    for poll, record in zip(polls, found, strict=True):
                        _answer(poll[4], record)
            finally:
                await pool.putconn(conn)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled (the loop shuts down): so are the polls
            for *_, future in batch:
                future.cancel()
            raise


def _answer(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # else the request was given up meanwhile
        future.set_result(value)


_by_engine: weakref.WeakKeyDictionary[Engine, Polls] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def polls_for(db: Engine) -> Polls:
    """The engine's one `Polls`."""
    polls = _by_engine.get(db)
    if polls is None:
        with _by_engine_lock:
            polls = _by_engine.setdefault(db, Polls(db))
    return polls
