"""The state the parts of the `dashscope` engine share, and their plumbing: how a task is ended,
blocking work is run off the event loop, and a submitted task is handed to its poller."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ...config import Settings
from ...protocol import Status
from ..base import HeldTask
from .errors import ProviderTransient
from .journal import UpstreamJournal
from .limiter import RateLimiter
from .poller import AccountPoller, Flight
from .provider import ProviderClient

__all__ = ["RelayParts", "now_ms"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def now_ms() -> int:
    return int(time.time() * 1000)


class RelayParts(abc.ABC):
    """What submitting, reconciling and keeping results share (`engine.DashscopeEngine` sets it up)."""

    settings: Settings
    models: dict[str, str]  # ours -> the provider's names
    accounts: list[str]  # a fingerprint per provider key, in key order
    timeout_ms: int
    manager: UpstreamJournal
    provider: ProviderClient | None
    pollers: list[AccountPoller]
    query_limiters: list[RateLimiter]
    submit_limiters: list[RateLimiter]
    _db: concurrent.futures.ThreadPoolExecutor
    _held: set[str]
    _closing: set[str]  # no longer held, their end (or retry) still being recorded
    _cancel_asked: set[str]  # cancels of held tasks not yet with a poller
    _statuses: dict[str, str]
    _ending: set[asyncio.Task[None]]
    resolve_upload: Callable[[str, str], Path | None]  # (owner, oss key) -> the owner's uploaded file

    @abc.abstractmethod
    async def _reconcile(self, task: HeldTask, k: int, intent_ms: int, *, live: bool) -> None:
        """Find and adopt the upstream task of a submit whose answer was lost (`reconcile.py`)."""

    def _account_index(self, task: HeldTask) -> int | None:
        """The key a task was submitted with; it must be asked about with the same one."""
        if task.upstream_account in self.accounts:
            return self.accounts.index(task.upstream_account)
        self._spawn(self._end(task.id, self.manager.fail, "InternalError.UpstreamAccount",
                              "the provider account this task was submitted with is no longer configured"))
        return None

    # -- watching: the poller's handler ---------------------------------------------------------

    def _watch(self, task: HeldTask, k: int, upstream_id: str, submitted_ms: int, status: str,
               prompt: str | None) -> None:
        self.pollers[k].add(Flight(task.id, upstream_id, submitted_ms, status, prompt))
        if task.cancel_requested or task.id in self._cancel_asked:
            self._cancel_asked.discard(task.id)
            self.pollers[k].request_cancel(task.id)


    async def _retry(self, task: HeldTask, exc: ProviderTransient) -> None:
        self._held.discard(task.id)
        self._closing.add(task.id)
        try:
            await self._call(self.manager.retry, task, exc.code, exc.message, exc.retry_after or 0.0)
        finally:
            self._closing.discard(task.id)

    async def _end(self, task_id: str, verb: Callable[..., Status | None], *args: Any, **kwargs: Any) -> Status | None:
        """Finish a task with one of the manager's compare-and-set verbs; it is then not held.
        Until the verb has returned the table still has it RUNNING under this lease, so it
        takes up room (`_closing`): a claim in between would hold one task more than the
        capacity."""
        self._held.discard(task_id)
        self._closing.add(task_id)
        self._cancel_asked.discard(task_id)
        self._statuses.pop(task_id, None)
        for poller in self.pollers:
            poller.remove(task_id)
        try:
            return await self._call(verb, task_id, *args, **kwargs)
        except Exception:
            log.exception("relay: recording the end of task %s failed; its lease will lapse", task_id)
            return None
        finally:
            self._closing.discard(task_id)

    def _spawn(self, work: Any) -> None:
        job = asyncio.get_running_loop().create_task(work)
        self._ending.add(job)
        job.add_done_callback(self._ending.discard)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (SQL, file copies) on the relay's own small thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._db, functools.partial(fn, *args, **kwargs))
