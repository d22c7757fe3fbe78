"""Pacing of the provider's API: a rate limiter per account, and the schedule of polls.

The provider allows each account a fixed number of calls a second (20 task queries and 50
submits for the video models), however many tasks are in flight. It counts calls as they
*arrive*, over every sliding second, and answers 429 to one call more. `RateLimiter` is that
budget, shared by every coroutine of one process that speaks for the account (processes on one
database that share the account split it between them: `sharing.py`). `PollSchedule`
decides which task to ask about next: each task is polled fast at first, then every 15 s, and
the tasks most overdue go first, so when the budget is short every task waits a little longer
rather than some forever.

How the limiter keeps to the limit at arrival
---------------------------------------------
A call granted on time can go late (a busy event loop, a database write between the grant and
the send, a connection being opened), and late calls bunch up. So the limiter counts calls as
they go, not grants. It has `capacity` places (the rate, for a whole-number rate and
`burst=1`). A call takes one just before its request is written, waiting for one if all are
taken, and holds it until one second after the request can last have arrived at the provider:

* one second after its answer came back, if that was within `margin` seconds of the write: a
  request arrives before its answer, so nothing is assumed;
* else one second after `margin` seconds past the write: a request is taken to arrive within
  `margin` of being written (network jitter), however long the provider takes to answer;
* a call that ended without an answer (a timeout, a broken connection) may still arrive late:
  it holds its place until one second after it ended, so a retry counts together with it;
* a call that failed before anything was written gives its place back at once.

Whatever calls arrive within one second all held their places at the moment the last of them
took its own, so no second ever sees more than `capacity` of them, however late each one went.

Turns are paced: they are spaced `1 / rate` apart (a token bucket, with `burst`), served in the
order asked, and given only when a place is free for the call, counting the places kept for
the turns given in the last second whose calls have not gone yet. So with the budget in full
use a call goes as soon as its turn is given, and what the caller chose to ask at its turn is
not held up behind earlier calls. A turn never used keeps a place free for that second at
most; a call made later than that may have to wait for a place as it goes.

The moment of the write comes from httpcore's `trace` extension, which calls `Turn.sending()`
just before the request's bytes are written: time spent waiting for a connection from the pool
or opening one is not counted. Under a transport that does not trace, the place is taken when
the call leaves (`leave()`, just before it is handed to the transport), and only the answer
(or the end of the call) frees it.

Interface
---------

    limiter = RateLimiter(20)       # rate, burst=1, margin=0.25 s: 20 places
    turn = await limiter.acquire()  # wait for a turn (paced, in the order asked)
    await turn.leave(traced=True)   # the call is handed to the transport now
    await turn.sending()            # its bytes are being written (each write; the last counts)
    turn.answered()                 # its answer came back (any status, 429 included)
    turn.unanswered()               # it ended without an answer
    turn.release()                  # it failed before anything was sent
    limiter.delay(), limiter.held   # how long an acquire() would wait now; places held now
    limiter.reshape(10)             # another rate from now on (0: no calls until the next change)

`ProviderClient` does everything after `acquire()` by itself, for the turns its caller's task
acquired (`take_turns()`, a context variable that `acquire()` sets): the next API call made in
the same task, or in a task created from it, uses them. So callers write just
`await limiter.acquire()` before a provider call. A turn acquired again from the same limiter
in the same task replaces the one not used.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["PollSchedule", "RateLimiter", "Turn", "take_turns"]

# A hair longer than 1/rate between grants, so that float rounding can never let one more
# grant into a window than the arithmetic allows.
_MARGIN = 1.0 + 1e-9
# How long a turn keeps a place free for its call (the call takes it within milliseconds when it
# is made at once; a turn never used stops counting after this).
_KEEP = 1.0

_turns: contextvars.ContextVar[tuple[Turn, ...]] = contextvars.ContextVar("ref2video_dashscope_turns", default=())


def take_turns() -> tuple[Turn, ...]:
    """The turns acquired in this context and not used yet, for the call about to be made.
    They leave the context: each turn serves one call."""
    turns = _turns.get()
    if not turns:
        return ()
    _turns.set(())
    return tuple(turn for turn in turns if turn.usable)


class Turn:
    """One call's turn at its limiter, from `RateLimiter.acquire()`.

    `leave()`, `sending()`, `answered()`, `unanswered()` and `release()` tell the limiter what
    became of the call; while the call holds a place in the window, `expiry()` says until when
    (see the module docstring).
    """

    __slots__ = ("_answered", "_dropped", "_ended", "_granted", "_holding", "_left", "_limiter", "_spent",
                 "_traced", "_written")

    def __init__(self, limiter: RateLimiter, granted: float) -> None:
        self._limiter = limiter
        self._granted = granted  # when the turn was given: it keeps a place free a while
        self._left: float | None = None  # the latest departure stamp: leave(), then each write
        self._traced = False  # the transport will say when it writes (sending())
        self._written = False  # it did: the request's bytes went out
        self._ended: float | None = None
        self._answered = False
        self._holding = False  # holds a place in the limiter's window
        self._spent = False  # used by a call, or replaced: not handed to another call
        self._dropped = False  # released or replaced: its call will not take a place

    def __repr__(self) -> str:
        state = ("answered" if self._answered else "unanswered") if self._ended is not None else \
            "written" if self._written else "left" if self._left is not None else \
            "replaced" if self._spent else "granted"
        return f"<Turn {state} of {self._limiter!r}>"

    @property
    def usable(self) -> bool:
        """Not yet used by a call nor replaced."""
        return not self._spent

    def expiry(self) -> float:
        """When this call's place is free again: inf while that is not known yet (or the call
        has not taken one)."""
        margin = self._limiter.margin
        if self._left is None:
            return math.inf
        if self._ended is None:
            return self._left + margin + 1.0 if self._written else math.inf
        if self._answered:  # if when it was written is not known, only the answer bounds it
            return (min(self._ended, self._left + margin) if self._written else self._ended) + 1.0
        return max(self._ended, self._left + margin) + 1.0

    async def leave(self, *, traced: bool = False) -> None:
        """The call is handed to the transport now: call this just before sending. With
        `traced`, the transport calls `sending()` before it writes, and the place is taken
        then; else it is taken now, waiting for one if none is free."""
        if self._ended is not None or self._left is not None:
            raise RuntimeError("this turn has been used by a call; acquire another")
        self._spent = True
        self._traced = traced
        if not traced:
            await self._limiter._place(self)
        self._left = self._limiter._clock()

    async def sending(self) -> None:
        """The request's bytes are about to be written (or are being written: each write
        stamps the call again, the last counts). Takes the call's place first if it holds none,
        waiting for one if none is free."""
        if self._ended is not None:
            return
        self._spent = True
        if not self._holding:
            await self._limiter._place(self)
        self._left = self._limiter._clock()
        if not self._written:  # its expiry is known from now on (later writes only delay it)
            self._written = True
            self._limiter._changed()

    def answered(self) -> None:
        """The answer came back now (whatever its status, 429 included)."""
        self._end(answered=True)

    def unanswered(self) -> None:
        """The call ended without an answer: if anything was sent, it counts until one second
        after now."""
        self._end(answered=False)

    def release(self) -> None:
        """The call failed before anything was sent: give its place back. No effect once the
        request was written or the call ended."""
        self._spent = True
        if self._written or self._ended is not None:
            return
        self._dropped = True
        if self._holding:
            self._limiter._drop(self)
        else:
            self._limiter._changed()  # the place its turn kept is free

    def _end(self, *, answered: bool) -> None:
        if self._ended is not None:
            return
        now = self._limiter._clock()
        if self._left is None:
            self._left = now
        self._ended, self._answered, self._spent = now, answered, True
        if not self._holding:
            if self._traced and not self._written and not answered:
                return  # the transport wrote nothing: nothing can arrive
            self._limiter._hold(self)  # counted, even over the capacity: it went
        self._limiter._changed()


class RateLimiter:
    """The call budget of one provider account, shared by coroutines; see the module docstring.

    ```python
    limiter = RateLimiter(20)               # the account may make 20 task queries a second

    async def poll(task_id: str) -> UpstreamTask:
        await limiter.acquire()             # callers are served in the order they asked
        return await provider.get(task_id)  # the provider counts the call as it goes
    ```

    Grants are paced as a token bucket (GCRA): `burst` at once after a quiet spell, then one
    every `1 / rate` seconds. The window has `capacity` places, `floor(rate) + burst - 1`
    (the rate itself with `burst=1`, the default), so no second ever sees more calls arrive
    than that. `margin` is how long after being written a request is taken to arrive at the
    latest, for calls not answered sooner (see the module docstring).

    Each `acquire()` reserves its pacing slot when it is called, so turns follow call order
    (FIFO); turns and calls waiting for room queue in order too, and one keeper task hands out
    what comes free, all at once (a busy event loop must not hand out one an iteration). A
    waiter cancelled while it waits for its slot loses that slot (at most `1 / rate` of the
    account's time). `clock` and `sleep` can be replaced, for tests with a fake clock. One
    limiter serves one event loop; `reshape()` changes its rate, which is how relay processes
    sharing an account split its rate (`sharing.py`).
    """

    def __init__(self, rate_per_second: float, burst: int = 1, *, margin: float = 0.25,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if not (math.isfinite(rate_per_second) and rate_per_second > 0):
            raise ValueError(f"rate_per_second must be a positive number, not {rate_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a number of seconds, 0 or more, not {margin!r}")
        self.rate = rate_per_second
        self.burst = burst
        self.margin = margin
        self.capacity = max(1, math.floor(rate_per_second + 1e-9)) + burst - 1
        self._clock = clock
        self._sleep = sleep
        self._interval = _MARGIN / rate_per_second
        self._tolerance = (burst - 1) * self._interval
        # The theoretical arrival time of the next grant is anchor + count * interval: one
        # multiplication, so rounding does not accumulate over a long busy spell.
        self._anchor = -math.inf
        self._count = 0
        self._held: list[Turn] = []  # the calls holding a place (a few dozen at most)
        self._kept: list[Turn] = []  # turns given whose calls have not taken a place yet
        self._queue: deque[tuple[asyncio.Future[None], Turn]] = deque()  # calls waiting for a place
        self._turns: deque[tuple[asyncio.Future[None], Turn]] = deque()  # turns waiting for room
        self._keeper: asyncio.Task[None] | None = None  # hands out places and turns while some wait
        self._change: asyncio.Future[None] | None = None  # what the keeper waits on besides time

    def __repr__(self) -> str:
        return f"RateLimiter({self.rate:g}/s, burst={self.burst}, margin={self.margin:g})"

    async def acquire(self) -> Turn:
        """Wait for this caller's turn. The turn is offered to the next provider call made in
        this task (replacing one this task acquired from this limiter and did not use)."""
        replaced = False
        others = []
        for other in _turns.get():
            if other._limiter is self:
                if other.usable:
                    replaced = other._dropped = True
                other._spent = True
            elif other.usable:
                others.append(other)
        if replaced:
            self._changed()  # the place it kept is free for others
        slot = self._reserve()
        while (wait := slot - self._clock()) > 0:  # a loop: a timer may fire a hair early
            await self._sleep(wait)
        turn = Turn(self, self._clock())
        await self._wait(self._turns, turn)
        _turns.set((*others, turn))
        return turn

    def reshape(self, rate_per_second: float) -> None:
        """Change the rate; 0 gives no turn and no place at all until the next change. Calls that
        hold places keep them: a lower capacity stops the next call taking one while that many
        are held, so no second sees more calls arrive than the capacity in force when the last
        of them took its place. Pacing goes on from the next grant due, at the new spacing."""
        if not (math.isfinite(rate_per_second) and rate_per_second >= 0):
            raise ValueError(f"rate_per_second must be a number, 0 or more, not {rate_per_second!r}")
        if rate_per_second == self.rate:
            return
        self.rate = rate_per_second
        if rate_per_second == 0:
            self.capacity = 0  # the pacing keeps its spacing: turns wait for room, not for a slot
        else:
            tat = self._next_theoretical(self._clock())
            self.capacity = max(1, math.floor(rate_per_second + 1e-9)) + self.burst - 1
            self._interval = _MARGIN / rate_per_second
            self._tolerance = (self.burst - 1) * self._interval
            if self._count:
                self._anchor, self._count = tat - self._interval, 1
        self._changed()

    def delay(self) -> float:
        """Seconds an `acquire()` made now would wait for its turn, and its call then for a
        place, as far as is known now (inf when every place is held by a call whose end is not
        known yet). Reserves nothing."""
        now = self._clock()
        pacing = max(0.0, self._next_theoretical(now) - self._tolerance - now)
        window = 0.0 if self._room_for_turn(now) and not self._turns else self._next_change(now, kept=True) - now
        return max(pacing, window)

    @property
    def held(self) -> int:
        """How many places are held now (by calls on their way or recently sent)."""
        self._room(self._clock())
        return len(self._held)

    # -- the window -----------------------------------------------------------------------------

    async def _place(self, turn: Turn) -> None:
        """Wait until the window has room, then give `turn`'s call a place."""
        await self._wait(self._queue, turn)

    async def _wait(self, queue: deque[tuple[asyncio.Future[None], Turn]], turn: Turn) -> None:
        """Join `queue` (calls waiting for a place, or turns waiting for room) unless there is
        room now and nobody waits; the keeper serves it."""
        now = self._clock()
        if not self._queue and (self._room(now) if queue is self._queue else
                                not self._turns and self._room_for_turn(now)):
            self._grant(queue, turn, now)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (granted, turn)
        queue.append(entry)
        if self._keeper is None:
            keep = self._keep()
            try:
                self._keeper = asyncio.get_running_loop().create_task(keep)
            except RuntimeError:  # the loop is closing (a shutdown): no keeper, and no stray coroutine
                keep.close()
                raise
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                turn.release()  # served just as it gave up
            elif entry in queue:
                queue.remove(entry)
            raise

    def _grant(self, queue: deque[tuple[asyncio.Future[None], Turn]], turn: Turn, now: float) -> None:
        if queue is self._queue:
            self._hold(turn)
        else:
            turn._granted = now
            self._kept.append(turn)

    async def _keep(self) -> None:
        """While some wait: hand out what comes free, all of it at once and in order (a late
        wake-up must not hand out one an iteration). Calls about to be written come first."""
        try:
            while True:
                now = self._clock()
                while self._queue and self._room(now):
                    self._serve(self._queue, now)
                while self._turns and not self._queue and self._room_for_turn(now):
                    self._serve(self._turns, now)
                if not self._queue and not self._turns:
                    return
                await self._wait_for_change(self._next_change(now) - now)
        finally:
            self._keeper = None

    def _serve(self, queue: deque[tuple[asyncio.Future[None], Turn]], now: float) -> None:
        granted, turn = queue.popleft()
        if not granted.done():  # else cancelled, and not back to say so yet
            self._grant(queue, turn, now)
            granted.set_result(None)

    def _room(self, now: float) -> bool:
        """Whether a call may take a place now: fewer than `capacity` are held."""
        held = self._held
        if any(turn.expiry() <= now for turn in held):
            self._held = []
            for turn in held:
                if turn.expiry() > now:
                    self._held.append(turn)
                else:
                    turn._holding = False
        return len(self._held) < self.capacity

    def _room_for_turn(self, now: float) -> bool:
        """Whether a turn may be given now: its call would find a place, counting those kept for
        the turns given in the last `_KEEP` seconds whose calls have not taken theirs."""
        self._kept = [turn for turn in self._kept if turn._granted + _KEEP > now and not (
            turn._holding or turn._written or turn._dropped or turn._ended is not None)]
        return self._room(now) and len(self._held) + len(self._kept) < self.capacity

    def _next_change(self, now: float, *, kept: bool | None = None) -> float:
        """The next moment a place (or one kept for a turn, when turns wait) may come free, as far
        as is known now."""
        times = [turn.expiry() for turn in self._held]
        if self._turns if kept is None else kept:
            times += [turn._granted + _KEEP for turn in self._kept]
        return min((t for t in times if t > now), default=math.inf)

    async def _wait_for_change(self, seconds: float) -> None:
        """Sleep `seconds` (inf: until told), or less when a call moves on."""
        change = self._change = asyncio.get_running_loop().create_future()
        try:
            if math.isinf(seconds):
                await change
            else:
                timer = asyncio.ensure_future(self._sleep(max(0.0, seconds)))
                try:
                    await asyncio.wait((change, timer), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
        finally:
            self._change = None

    def _changed(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    def _hold(self, turn: Turn) -> None:
        turn._holding = True
        self._held.append(turn)

    def _drop(self, turn: Turn) -> None:
        turn._holding = False
        self._held.remove(turn)
        self._changed()

    # -- pacing ---------------------------------------------------------------------------------

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
