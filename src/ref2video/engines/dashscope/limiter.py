"""Pacing of the provider's API: a rate limiter per account, and the schedule of polls.

The provider allows each account a fixed number of task queries a second (20 for the video
models), however many tasks are in flight. `RateLimiter` is that budget, shared by every
coroutine of one process that speaks for the account. `PollSchedule` decides which task to ask
about next: each task is polled fast at first, then every 15 s, and the tasks most overdue go
first, so when the budget is short every task waits a little longer rather than some forever.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
import math
import time
from collections.abc import Awaitable, Callable

__all__ = ["RateLimiter", "PollSchedule"]

# A hair longer than 1/rate between grants, so that float rounding can never let one more
# grant into a window than the arithmetic allows.
_MARGIN = 1.0 + 1e-9


class RateLimiter:
    """A token bucket (written as GCRA) for one provider account, shared by coroutines.

    ```python
    limiter = RateLimiter(20, burst=1)      # the account may make 20 task queries a second

    async def poll(task_id: str) -> UpstreamTask:
        await limiter.acquire()             # callers are served in the order they asked
        return await provider.get(task_id)
    ```

    `burst` requests may go at once after a quiet spell; after that one every `1 / rate`
    seconds. For a whole-number rate, no half-open window of one second ever holds more than
    `rate + burst - 1` grants, so with `burst=1` (the default) never more than the rate.

    Each `acquire()` reserves its slot when it is called, so grants follow call order (FIFO)
    without a queue object, and a waiter costs one sleeping coroutine. A waiter cancelled while
    it sleeps does not give its slot back: the account loses at most that one slot and is never
    taken over its rate. `clock` and `sleep` can be replaced, for tests with a fake clock.
    One limiter serves one event loop; processes sharing an account should split the rate.
    """

    def __init__(self, rate_per_second: float, burst: int = 1, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if not (math.isfinite(rate_per_second) and rate_per_second > 0):
            raise ValueError(f"rate_per_second must be a positive number, not {rate_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = rate_per_second
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._interval = _MARGIN / rate_per_second
        self._tolerance = (burst - 1) * self._interval
        # The theoretical arrival time of the next grant is anchor + count * interval: one
        # multiplication, so rounding does not accumulate over a long busy spell.
        self._anchor = -math.inf
        self._count = 0
        self._window_cap = max(1, math.floor(rate_per_second + 1e-9)) + burst - 1
        self._granted: deque[float] = deque(maxlen=self._window_cap)

    def __repr__(self) -> str:
        return f"RateLimiter({self.rate:g}/s, burst={self.burst})"

    async def acquire(self) -> None:
        """Wait for this caller's turn; return when it may send one request."""
        slot = self._reserve()
        while (wait := slot - self._clock()) > 0:  # a loop: a timer may fire a hair early
            await self._sleep(wait)
        # Slots are reserved ahead; if the event loop was too busy to wake their holders on
        # time, several would now go at once. The log of grants actually made keeps any one
        # second to the rate even then (the provider counts what arrives, not what was meant).
        while len(self._granted) == self._window_cap and (wait := self._granted[0] + 1.0 - self._clock()) > 0:
            await self._sleep(wait)
        self._granted.append(self._clock())

    def delay(self) -> float:
        """Seconds an `acquire()` made now would wait (0 when a token is free); reserves nothing."""
        now = self._clock()
        return max(0.0, self._next_theoretical(now) - self._tolerance - now)

    def _reserve(self) -> float:
        now = self._clock()
        tat = self._next_theoretical(now)
        if tat <= now:  # idle long enough for the bucket to be full again
            self._anchor, self._count, tat = now, 0, now
        self._count += 1
        return max(now, tat - self._tolerance)

    def _next_theoretical(self, now: float) -> float:
        return self._anchor + self._count * self._interval if self._count else -math.inf


class _Entry:
    """What the schedule knows of one task; `seq` identifies its live heap entry."""

    __slots__ = ("seq", "polls", "failures")

    def __init__(self) -> None:
        self.seq = -1  # -1: handed out by due() and not scheduled again yet
        self.polls = 0
        self.failures = 0


class PollSchedule:
    """When to poll each relayed task next: fast after submit, then every `cap` seconds.

    ```python
    schedule = PollSchedule()                       # gaps of 1, 2, 4, 8, 15, 15, ... seconds
    schedule.add(task_id, time.monotonic())         # just submitted: first poll in 1 s

    for task_id in schedule.due(time.monotonic(), limit=50):   # most overdue first
        try:
            task = await provider.get(task_id)
        except ProviderTransient as exc:
            if schedule.failed(task_id, time.monotonic(), retry_after=exc.retry_after) > 10:
                ...                                 # out of retries: fail the task
            continue
        if task.done:
            schedule.remove(task_id)
        else:
            schedule.polled(task_id, time.monotonic())
    ```

    Plain data with no clock and no I/O: callers pass `now` (any monotonic seconds). A task
    handed out by `due()` stays known but unscheduled until `polled()`, `failed()` or
    `remove()` says what became of it, so one task is never polled twice at once.
    The gap after the n-th poll is `min(cap, first * factor**n)`, or the provider's
    Retry-After when that is longer. A task costs one small record and one heap tuple (about
    300 bytes); removals are lazy, and the heap is rebuilt when stale entries pile up.
    """

    def __init__(self, first: float = 1.0, factor: float = 2.0, cap: float = 15.0) -> None:
        if not (0 < first <= cap and factor >= 1):
            raise ValueError("need 0 < first <= cap and factor >= 1")
        self.first, self.factor, self.cap = first, factor, cap
        self._tasks: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._stale = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def interval(self, polls: int) -> float:
        """The gap before the next poll of a task that has been polled `polls` times."""
        if polls >= 64:  # past any sensible growth; avoids overflow in the power
            return self.cap
        return min(self.cap, self.first * self.factor**polls)

    def add(self, task_id: str, now: float, *, polls: int = 0, delay: float | None = None) -> float:
        """Track a task (or restart its schedule); its first poll is due `delay` seconds from
        now, by default the gap for `polls` polls (a task adopted after a restart may pass a
        higher count to start slower). Returns the due time."""
        entry = self._tasks.get(task_id)
        if entry is None:
            entry = self._tasks[task_id] = _Entry()
        entry.polls, entry.failures = polls, 0
        return self._push(task_id, entry, now + (self.interval(polls) if delay is None else delay))

    def due(self, now: float, limit: int | None = None) -> list[str]:
        """Hand out the tasks due by `now`, most overdue first (ties in scheduling order)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            _, seq, task_id = heapq.heappop(self._heap)
            entry = self._tasks.get(task_id)
            if entry is None or entry.seq != seq:
                self._stale -= 1
                continue
            entry.seq = -1
            out.append(task_id)
        return out

    def next_due(self) -> float | None:
        """When the earliest scheduled poll is due, or None when nothing is scheduled."""
        while self._heap:
            _, seq, task_id = self._heap[0]
            entry = self._tasks.get(task_id)
            if entry is not None and entry.seq == seq:
                return self._heap[0][0]
            heapq.heappop(self._heap)
            self._stale -= 1
        return None

    def polled(self, task_id: str, now: float, *, retry_after: float | None = None) -> float:
        """The task answered and is not finished: schedule its next poll. Returns the due time."""
        entry = self._tasks[task_id]
        entry.polls += 1
        entry.failures = 0
        return self._push(task_id, entry, now + max(self.interval(entry.polls), retry_after or 0.0))

    def failed(self, task_id: str, now: float, *, retry_after: float | None = None) -> int:
        """A poll of the task failed in passing: schedule another, backing off the same way.
        Returns how many polls in a row have failed, for the caller's retry budget."""
        entry = self._tasks[task_id]
        entry.polls += 1
        entry.failures += 1
        self._push(task_id, entry, now + max(self.interval(entry.polls), retry_after or 0.0))
        return entry.failures

    def remove(self, task_id: str) -> None:
        """Forget the task (finished, failed or handed to someone else); unknown ids are ignored."""
        entry = self._tasks.pop(task_id, None)
        if entry is not None and entry.seq >= 0:
            self._mark_stale()

    def _push(self, task_id: str, entry: _Entry, when: float) -> float:
        if entry.seq >= 0:  # rescheduled while scheduled: its old heap entry is now stale
            self._mark_stale()
        self._seq += 1
        entry.seq = self._seq
        heapq.heappush(self._heap, (when, self._seq, task_id))
        return when

    def _mark_stale(self) -> None:
        self._stale += 1
        if self._stale > 1024 and self._stale > len(self._heap) // 2:
            self._heap = [item for item in self._heap
                          if (e := self._tasks.get(item[2])) is not None and e.seq == item[1]]
            heapq.heapify(self._heap)
            self._stale = 0
