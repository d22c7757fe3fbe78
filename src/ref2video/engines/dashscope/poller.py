"""Watching one provider account's tasks until each ends, within the account's query budget.

An `AccountPoller` holds every in-flight task submitted with one key. Its lanes (a few
coroutines) spend the account's query limiter on the most useful call first:

1. cancels the owners asked for (the provider cancels only PENDING tasks, so they are urgent);
2. the query of a task a list scan saw finished (it carries the video URL and the usage);
3. the next page of a list scan, when one is due;
4. the query of the task whose poll is most overdue (`PollSchedule`: 1, 2, 4, 8, then 15 s).

A list page answers for up to 100 tasks at once, so with many tasks in flight the poller scans
the account's task list every few seconds and counts each task seen on it as polled; a task's
own query is then needed only once, when it has finished. With few tasks in flight, single
queries are cheaper and the schedule alone drives them.

The poller only asks and sorts answers; what an ending means for our task (download, record,
fail) is the `Handler`'s business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ...protocol import Status
from .errors import ProviderError, ProviderTransient
from .limiter import PollSchedule, RateLimiter
from .provider import ProviderClient, UpstreamTask, utc

__all__ = ["AccountPoller", "Flight", "Handler"]

log = logging.getLogger(__name__)

SCAN_PAGE = 100  # the most the provider's list gives in one page
_ACTIVE = frozenset({Status.PENDING.value, Status.RUNNING.value})
_FINISHED = frozenset({Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELED.value})


class Flight:
    """One of our tasks while the provider works on it (small: there may be 10,000)."""

    __slots__ = ("task_id", "upstream_id", "submitted_ms", "status", "prompt", "cancel", "unknown")

    def __init__(self, task_id: str, upstream_id: str, submitted_ms: int, status: str,
                 prompt: str | None = None) -> None:
        self.task_id = task_id
        self.upstream_id = upstream_id
        self.submitted_ms = submitted_ms  # our clock, when the submit left
        self.status = status  # the provider's last known state
        self.prompt = prompt  # kept only for adopted tasks, whose result is checked against it
        self.cancel = False  # a cancel is queued or on its way
        self.unknown = 0  # UNKNOWN answers in a row, after the grace period


class Handler(Protocol):
    """What the relay does with the poller's findings."""

    def finished(self, flight: Flight, task: UpstreamTask) -> None: ...

    def status_changed(self, flight: Flight, status: str) -> None: ...

    def gave_up(self, flight: Flight, code: str, message: str) -> None: ...

    def cancel_refused(self, flight: Flight) -> None: ...


@dataclass
class _Scan:
    """A list scan in progress: its window (epoch ms) and the next page to ask for."""

    start_ms: int
    end_ms: int
    page: int = 1
    busy: bool = False


class AccountPoller:
    """Polls the in-flight tasks of account `key_index` until each has ended.

    ```python
    poller = AccountPoller(provider, 0, RateLimiter(20), handler)
    runner = asyncio.create_task(poller.run())
    poller.add(Flight(task_id, upstream_id, submitted_ms, "PENDING"))
    ...
    poller.request_cancel(task_id)      # passed upstream ahead of any poll
    ```

    Every call of this poller waits for `limiter`, which no other part of the process uses
    for queries of this account, so the account never sees more than its rate. A task whose
    queries fail `retry_budget` times in a row is given up (`Handler.gave_up`) with the last
    error's code and message.
    """

    def __init__(self, provider: ProviderClient, key_index: int, limiter: RateLimiter, handler: Handler, *,
                 retry_budget: int = 40, schedule: PollSchedule | None = None, lanes: int | None = None,
                 scan_threshold: int = 50, scan_interval: float = 3.0, skew_ms: int = 300_000,
                 unknown_grace_ms: int = 120_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.key_index = key_index
        self.limiter = limiter
        self.handler = handler
        self.retry_budget = retry_budget
        self.schedule = schedule or PollSchedule()
        self.lanes = lanes or max(2, min(16, round(limiter.rate / 2)))
        self.scan_threshold = scan_threshold
        self.scan_interval = scan_interval
        self.skew_ms = skew_ms  # our clock against the provider's, for list windows
        self.unknown_grace_ms = unknown_grace_ms
        self._clock = clock
        self._by_task: dict[str, Flight] = {}
        self._by_upstream: dict[str, Flight] = {}
        self._finished: deque[str] = deque()  # upstream ids a scan saw end, to query once
        self._cancels: deque[str] = deque()
        self._scan: _Scan | None = None
        self._last_scan = -1e9
        self._wake = asyncio.Event()
        self.calls = 0  # queries, list pages and cancels sent, for figures

    def __len__(self) -> int:
        return len(self._by_task)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_task

    # -- what the relay tells the poller --------------------------------------------------------

    def add(self, flight: Flight, *, polls: int = 0) -> None:
        """Watch a task; its first query is due after the schedule's gap for `polls` polls."""
        self._by_task[flight.task_id] = flight
        self._by_upstream[flight.upstream_id] = flight
        self.schedule.add(flight.upstream_id, self._clock(), polls=polls)
        self._wake.set()

    def remove(self, task_id: str) -> Flight | None:
        flight = self._by_task.pop(task_id, None)
        if flight is not None:
            self._by_upstream.pop(flight.upstream_id, None)
            self.schedule.remove(flight.upstream_id)
        return flight

    def request_cancel(self, task_id: str) -> bool:
        """Pass the owner's cancel upstream; False when the task is not watched here."""
        flight = self._by_task.get(task_id)
        if flight is None or flight.cancel:
            return flight is not None
        flight.cancel = True
        self._cancels.append(flight.upstream_id)
        self._wake.set()
        return True

    # -- the lanes ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled."""
        await asyncio.gather(*(self._lane() for _ in range(self.lanes)))

    async def _lane(self) -> None:
        while True:
            wait = self._idle_for(self._clock())
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(wait, 1.0))
                except TimeoutError:
                    pass
                continue
            await self.limiter.acquire()
            job = self._take(self._clock())
            if job is not None:
                self.calls += 1
                try:
                    await job
                except Exception:  # one bad answer must not stop the account's polling
                    log.exception("relay poll on account %d failed", self.key_index)

    def _idle_for(self, now: float) -> float:
        """0 when there is a call worth making now, else how long until there may be one."""
        if self._cancels or self._finished or self._scan_ready(now):
            return 0.0
        due = self.schedule.next_due()
        if self._scanning():
            scan_due = self._last_scan + self.scan_interval - now
            due_in = scan_due if due is None else min(scan_due, due - now)
        else:
            due_in = 60.0 if due is None else due - now
        return max(0.0, due_in)

    def _take(self, now: float) -> Coroutine[Any, Any, None] | None:
        """The most useful call to make now, or None when other lanes took the work."""
        while self._cancels:
            flight = self._by_upstream.get(self._cancels.popleft())
            if flight is not None:
                return self._cancel(flight)
        while self._finished:
            flight = self._by_upstream.get(self._finished.popleft())
            if flight is not None:
                return self._query(flight)
        if self._scan_ready(now):
            return self._scan_page()
        for upstream_id in self.schedule.due(now, limit=1):
            flight = self._by_upstream.get(upstream_id)
            if flight is not None:
                return self._query(flight)
        return None

    # -- single queries -------------------------------------------------------------------------

    async def _query(self, flight: Flight) -> None:
        try:
            task = await self.provider.get(flight.upstream_id, key_index=self.key_index)
        except (ProviderTransient, ProviderError) as exc:
            retry_after = exc.retry_after if isinstance(exc, ProviderTransient) else None
            self._failed(flight, exc.code, exc.message, retry_after)
            return
        if flight.task_id not in self._by_task:
            return  # removed while the answer was on its way
        if task.done:
            self.remove(flight.task_id)
            self.handler.finished(flight, task)
        elif task.status in _ACTIVE:
            flight.unknown = 0
            self._seen(flight, task.status)
            self._scheduled(flight)
            self.schedule.polled(flight.upstream_id, self._clock())
        else:  # UNKNOWN: not visible yet right after the submit, or gone (expired, never made)
            self._unknown(flight)

    def _unknown(self, flight: Flight) -> None:
        self._scheduled(flight)
        if int(time.time() * 1000) - flight.submitted_ms < self.unknown_grace_ms:
            self.schedule.polled(flight.upstream_id, self._clock())
            return
        flight.unknown += 1
        if flight.unknown >= 3:
            self.remove(flight.task_id)
            self.handler.gave_up(flight, "InternalError.UpstreamLost",
                                 f"the provider no longer knows task {flight.upstream_id}")
        else:
            self.schedule.failed(flight.upstream_id, self._clock())

    def _failed(self, flight: Flight, code: str, message: str, retry_after: float | None) -> None:
        if flight.task_id not in self._by_task:
            return
        self._scheduled(flight)
        failures = self.schedule.failed(flight.upstream_id, self._clock(), retry_after=retry_after)
        if failures >= self.retry_budget:
            self.remove(flight.task_id)
            self.handler.gave_up(flight, code, f"{message} (gave up after {failures} failed queries in a row)")

    def _scheduled(self, flight: Flight) -> None:
        """Put back on the schedule a task a scan took off it (it looked finished)."""
        if flight.upstream_id not in self.schedule:
            self.schedule.add(flight.upstream_id, self._clock(), polls=4)

    def _seen(self, flight: Flight, status: str) -> None:
        if status != flight.status:
            flight.status = status
            self.handler.status_changed(flight, status)

    # -- cancels --------------------------------------------------------------------------------

    async def _cancel(self, flight: Flight) -> None:
        try:
            await self.provider.cancel(flight.upstream_id, key_index=self.key_index)
        except ProviderError:  # the provider cancels only PENDING tasks: this one runs on
            flight.cancel = False
            self.handler.cancel_refused(flight)
            return
        except ProviderTransient:
            self._cancels.append(flight.upstream_id)  # ask again on a later turn
            return
        # Canceled upstream: its query says so, and the task ends the usual way.
        self._finished.appendleft(flight.upstream_id)

    # -- list scans -----------------------------------------------------------------------------

    def _scanning(self) -> bool:
        return len(self._by_task) > self.scan_threshold

    def _scan_ready(self, now: float) -> bool:
        if self._scan is not None:
            return not self._scan.busy
        if not self._scanning() or now - self._last_scan < self.scan_interval:
            return False
        oldest = min(flight.submitted_ms for flight in self._by_task.values())
        # The window ends now: tasks submitted during the scan would shift its pages, and
        # they are young enough to be polled on their own anyway.
        self._scan = _Scan(oldest - self.skew_ms, int(time.time() * 1000))
        self._last_scan = now
        return True

    async def _scan_page(self) -> None:
        scan = self._scan
        if scan is None or scan.busy:
            return
        scan.busy = True
        try:
            page = await self.provider.list(utc(scan.start_ms), utc(scan.end_ms), page_no=scan.page,
                                            page_size=SCAN_PAGE, key_index=self.key_index)
        except (ProviderTransient, ProviderError) as exc:
            log.warning("relay list scan on account %d failed: %s", self.key_index, exc.message)
            self._scan = None  # the schedule still polls everyone; the next scan starts afresh
            return
        finally:
            scan.busy = False
        now = self._clock()
        for item in page:
            flight = self._by_upstream.get(item.task_id)
            if flight is None:
                continue
            if item.status in _FINISHED:
                self.schedule.remove(flight.upstream_id)
                self._finished.append(flight.upstream_id)
            elif item.status in _ACTIVE:
                self._seen(flight, item.status)
                if flight.upstream_id in self.schedule:
                    self.schedule.polled(flight.upstream_id, now)
        if len(page) < SCAN_PAGE:
            self._scan = None
        else:
            scan.page += 1
        self._wake.set()
