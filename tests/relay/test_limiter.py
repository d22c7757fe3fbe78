"""`RateLimiter` (against a fake clock, simulated time and the real one) and `PollSchedule`."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import selectors
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import httpcore
import httpx
import pytest

from ref2video.engines.dashscope import PollSchedule, ProviderClient, ProviderTransient, RateLimiter

T = TypeVar("T")


class FakeClock:
    """Time that passes only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def most_in_a_second(stamps: list[float]) -> int:
    """The largest number of stamps in any half-open window [t, t + 1 s)."""
    stamps = sorted(stamps)
    return max(bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps))


def grants(limiter: RateLimiter, clock: FakeClock, count: int, idle_every: int = 0, idle: float = 0.0) -> list[float]:
    async def main() -> list[float]:
        stamps = []
        for i in range(count):
            if idle_every and i % idle_every == 0:
                clock.now += idle  # a quiet spell lets the bucket refill
            await limiter.acquire()
            stamps.append(clock())
        return stamps
    return asyncio.run(main())


@pytest.mark.parametrize("rate, burst", [(50, 1), (20, 1), (20, 5), (3, 1), (7, 10)])
def test_no_second_ever_holds_more_than_the_rate_plus_burst_less_one(rate: int, burst: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, burst, clock=clock, sleep=clock.sleep)
    # Bursts of rate + burst grants, each after a quiet spell long enough to refill the bucket
    # (and a few a little too short): the worst case is reached, and never passed.
    refill = burst / rate
    for idle in (refill + 0.01, refill * 0.6, refill * 0.3):
        stamps = grants(limiter, clock, 20 * (rate + burst), idle_every=rate + burst, idle=idle)
        assert most_in_a_second(stamps) <= rate + burst - 1
    stamps = grants(limiter, clock, 20 * (rate + burst), idle_every=rate + burst, idle=refill + 0.01)
    assert most_in_a_second(stamps) == rate + burst - 1


def test_a_full_bucket_goes_at_once_then_one_per_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock, sleep=clock.sleep)
    stamps = [t - 1000.0 for t in grants(limiter, clock, 6)]
    assert stamps == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    assert limiter.delay() == pytest.approx(0.1)
    clock.now += 10  # long idle: the burst is back, and no more than the burst
    assert limiter.delay() == 0
    start = clock.now
    assert [t - start for t in grants(limiter, clock, 4)] == pytest.approx([0, 0, 0, 0.1])


def test_real_time_60_calls_at_50_per_second() -> None:
    limiter = RateLimiter(50, burst=1)

    async def main() -> list[float]:
        stamps: list[float] = []

        async def one() -> None:
            turn = await limiter.acquire()
            await turn.leave()  # as ProviderClient does under a transport that does not trace
            stamps.append(time.monotonic())
            turn.answered()

        await asyncio.gather(*(one() for _ in range(60)))
        return stamps

    started = time.monotonic()
    stamps = asyncio.run(main())
    assert time.monotonic() - started >= 59 / 50  # the rate itself; a busy machine only takes longer
    # Turns are granted a little late and unevenly when the loop is busy (a loaded machine),
    # so grants may bunch; the calls, stamped as they go, never exceed the rate.
    assert most_in_a_second(stamps) <= 50


def test_waiters_are_served_in_the_order_they_asked() -> None:
    limiter = RateLimiter(200, burst=4)
    asked: list[int] = []
    served: list[int] = []

    async def one(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 3))  # arrive out of index order
        asked.append(i)
        await limiter.acquire()
        served.append(i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(40)))

    asyncio.run(main())
    assert asked != list(range(40)) and served == asked


def test_a_cancelled_waiter_does_not_let_anyone_jump_the_rate() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, burst=1, clock=loop.time)  # on simulated time (below)
        stamps: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            stamps.append(loop.time())

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.01)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stamps

    stamps = simulate(main)
    assert len(stamps) == 5
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps == pytest.approx([0.05, 0.1, 0.05, 0.05])  # 1/20 s apart; the lost slot is one 0.1 s gap


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (float("inf"), 1), (float("nan"), 1), (5, 0)])
def test_bad_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


# -- PollSchedule ------------------------------------------------------------------------------


def gaps_of_one_task(schedule: PollSchedule, polls: int) -> list[float]:
    now = 0.0
    schedule.add("t", now)
    gaps = []
    for _ in range(polls):
        due = schedule.next_due()
        assert due is not None
        assert schedule.due(due - 1e-6) == []  # not a moment early
        assert schedule.due(due) == ["t"]
        gaps.append(due - now)
        now = due
        schedule.polled("t", now)
    return gaps


def test_backoff_starts_fast_and_settles_at_15_seconds() -> None:
    assert gaps_of_one_task(PollSchedule(), 8) == [1, 2, 4, 8, 15, 15, 15, 15]
    assert gaps_of_one_task(PollSchedule(first=0.5, factor=3, cap=10), 5) == [0.5, 1.5, 4.5, 10, 10]
    assert PollSchedule().interval(10_000) == 15


def test_retry_after_is_honoured_when_it_is_longer() -> None:
    schedule = PollSchedule()
    schedule.add("t", 0.0)
    assert schedule.due(1.0) == ["t"]
    assert schedule.polled("t", 1.0, retry_after=30) == 31.0
    assert schedule.due(30.9) == [] and schedule.due(31.0) == ["t"]
    assert schedule.polled("t", 31.0, retry_after=0.5) == 35.0  # the backoff's 4 s is longer


def test_most_overdue_first_ties_in_scheduling_order_and_limit() -> None:
    schedule = PollSchedule()
    for i, when in enumerate([5.0, 0.0, 3.0, 0.0, 9.0]):
        schedule.add(f"t{i}", when)
    assert schedule.next_due() == 1.0
    assert schedule.due(4.0, limit=2) == ["t1", "t3"]
    assert schedule.due(4.0) == ["t2"]  # the rest of what is due, then nothing early
    assert schedule.due(100.0) == ["t0", "t4"]
    assert schedule.next_due() is None and len(schedule) == 5  # handed out, still known


def test_handed_out_tasks_wait_for_a_verdict_and_removal_is_final() -> None:
    schedule = PollSchedule()
    schedule.add("a", 0.0)
    schedule.add("b", 0.0)
    assert schedule.due(1.0) == ["a", "b"]
    assert schedule.due(1000.0) == []  # not handed out twice while being polled
    schedule.remove("a")
    schedule.polled("b", 1.0)
    assert "a" not in schedule and "b" in schedule and len(schedule) == 1
    with pytest.raises(KeyError):
        schedule.polled("a", 2.0)
    schedule.remove("a")  # unknown ids are ignored
    schedule.add("b", 1.0, delay=0.0)  # restarting a scheduled task replaces its old entry
    assert schedule.due(1.0) == ["b"] and schedule.due(1000.0) == []


def test_failures_count_up_and_a_good_poll_resets_them() -> None:
    schedule = PollSchedule()
    schedule.add("t", 0.0)
    schedule.due(1.0)
    assert [schedule.failed("t", 1.0), schedule.due(3.0), schedule.failed("t", 3.0)] == [1, ["t"], 2]
    assert schedule.next_due() == 3.0 + 4  # failures back off like polls
    schedule.due(7.0)
    assert schedule.failed("t", 7.0, retry_after=60) == 3
    assert schedule.next_due() == 67.0
    schedule.due(67.0)
    schedule.polled("t", 67.0)
    assert schedule.due(82.0) == ["t"]
    assert schedule.failed("t", 82.0) == 1


def test_an_adopted_task_can_start_slow() -> None:
    schedule = PollSchedule()
    assert schedule.add("old", 100.0, polls=4) == 115.0


def test_ten_thousand_tasks_are_cheap() -> None:
    ids = [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(10_000)]
    rng = random.Random(7)
    tracemalloc.start()
    try:
        schedule = PollSchedule()
        for task_id in ids:
            schedule.add(task_id, rng.uniform(0, 15))
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert size < 3_000_000, f"{size / len(ids):.0f} bytes a task"
    # (How fast this runs is a benchmark's question, not this test's.)
    now, seen = 0.0, 0
    while now < 120:  # two simulated minutes: every task polled on its schedule
        for task_id in schedule.due(now):
            seen += 1
            if seen % 7 == 0:
                schedule.remove(task_id)  # finished
            else:
                schedule.polled(task_id, now)
        now += 0.25
    assert len(schedule._heap) <= 2 * len(schedule) + 1100  # stale entries do not pile up
    assert 20_000 < seen < 100_000


# -- calls counted as they leave and arrive, on simulated time --------------------------------------


class VirtualTime(asyncio.SelectorEventLoop):
    """An event loop on simulated time: when nothing is ready to run, its clock jumps to the next
    timer, so sleeps take no real time and every run is the same. `stall()` is the loop busy in
    one callback: nothing else runs meanwhile, and whatever falls due meanwhile runs late."""

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_Jump(self))

    def time(self) -> float:
        return self.now

    def stall(self, seconds: float) -> None:
        self.now += seconds


class _Jump(selectors.SelectSelector):
    def __init__(self, loop: VirtualTime) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready to run and no timer is set")
        self.loop.now += timeout
        return []


def simulate(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTime) as runner:
        return runner.run(main())


URL = "http://provider.test/api/v1"
RUNNING = {"output": {"task_id": "t-1", "task_status": "RUNNING"}}


def provider(arrivals: list[float], answer_in: Callable[[], float] = lambda: 0.005,
             status: int = 200) -> httpx.MockTransport:
    """The provider's task query: notes when each call arrives, answers `answer_in()` s later."""
    async def handler(request: httpx.Request) -> httpx.Response:
        arrivals.append(asyncio.get_running_loop().time())
        await asyncio.sleep(answer_in())
        return httpx.Response(status, json=RUNNING)
    return httpx.MockTransport(handler)


def test_calls_granted_on_time_but_sent_late_never_crowd_a_second() -> None:
    """Between its grant and its send a call may wait (a database write first, a loop busy
    elsewhere): the calls that arrive within any one second still never outnumber the rate."""
    rng = random.Random(11)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTime)
        limiter = RateLimiter(20, clock=loop.time)
        arrivals: list[float] = []
        transport = provider(arrivals, lambda: rng.uniform(0.002, 0.05))
        async with ProviderClient(URL, ["sk"], transport=transport) as client:
            async def lane() -> None:
                for _ in range(40):
                    await limiter.acquire()
                    if rng.random() < 0.3:
                        await asyncio.sleep(rng.uniform(0.0, 0.6))  # something else first
                    await client.get("t-1")

            async def busy() -> None:
                while True:
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    loop.stall(rng.uniform(0.0, 0.4))

            stalls = asyncio.create_task(busy())
            await asyncio.gather(*(lane() for _ in range(10)))
            stalls.cancel()
        return arrivals

    arrivals = simulate(main)
    assert len(arrivals) == 400
    assert most_in_a_second(arrivals) <= 20


def test_with_the_budget_in_full_use_a_call_goes_as_soon_as_its_turn_is_given() -> None:
    """Turns are given as places come free, so what a caller chose to ask at its turn (the most
    urgent call it had) is not then held up behind the calls of earlier turns."""
    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, clock=loop.time)
        waits: list[float] = []
        gone: list[float] = []

        async def lane() -> None:
            for _ in range(30):
                turn = await limiter.acquire()
                given = loop.time()
                await turn.leave()
                gone.append(loop.time())
                waits.append(gone[-1] - given)
                await asyncio.sleep(0.2)  # answers take 0.2 s: a place is held 1.2 s
                turn.answered()

        await asyncio.gather(*(lane() for _ in range(10)))
        return waits, (len(gone) - 1) / (max(gone) - min(gone))

    waits, rate = simulate(main)
    assert len(waits) == 300 and max(waits) == 0.0
    assert 20 / 1.2 * 0.98 < rate < 20 / 1.2 * 1.03  # as many as the places allow (a faster start)


def test_a_slow_event_loop_still_gets_nearly_the_rate() -> None:
    """Every iteration of the loop takes 0.1 s (a process short of CPU): the places that came
    free meanwhile are handed out together, not one an iteration, and no second is crowded."""
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTime)
        busy = True

        def slow_iteration() -> None:
            loop.stall(0.1)
            if busy:
                loop.call_soon(slow_iteration)

        limiter = RateLimiter(20, clock=loop.time)
        arrivals: list[float] = []
        async with ProviderClient(URL, ["sk"], transport=provider(arrivals, lambda: 0.0)) as client:
            async def lane() -> None:
                for _ in range(10):
                    await limiter.acquire()
                    await client.get("t-1")

            loop.call_soon(slow_iteration)
            await asyncio.gather(*(lane() for _ in range(40)))
            busy = False
        return arrivals

    arrivals = simulate(main)
    assert len(arrivals) == 400 and most_in_a_second(arrivals) <= 20
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) > 15  # calls a second


def test_quick_answers_keep_nearly_the_full_rate() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, clock=loop.time)
        arrivals: list[float] = []
        async with ProviderClient(URL, ["sk"], transport=provider(arrivals, lambda: 0.005)) as client:
            async def lane() -> None:
                for _ in range(60):
                    await limiter.acquire()
                    await client.get("t-1")

            await asyncio.gather(*(lane() for _ in range(10)))
        return arrivals

    arrivals = simulate(main)
    assert len(arrivals) == 600 and most_in_a_second(arrivals) == 20
    # Paced 1/20 s apart; a call's place comes back a second after its answer, 1.005 s after
    # its grant, so 20 calls take 1.005 s rather than 1 s.
    assert 599 / 20 <= arrivals[-1] - arrivals[0] < 599 / 20 * 1.01


def test_a_turn_not_used_takes_no_place() -> None:
    """A turn is only a paced slot: the place in the window is taken as the call goes."""
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(1, clock=loop.time)  # one place; a turn a second at most
        start = loop.time()
        gone: list[float] = []

        async def call(after: float, then: float) -> None:
            await asyncio.sleep(after)
            turn = await limiter.acquire()
            await asyncio.sleep(then)  # the turn is kept, not used yet
            await turn.leave()
            gone.append(loop.time() - start)
            turn.answered()

        # The first turn is taken at once and kept 5 s; the second, taken at 1 s (paced),
        # goes at once, and the first then goes at 5 s: the second was answered at 1 s.
        await asyncio.gather(call(0.0, 5.0), call(0.5, 0.0))
        return gone

    assert simulate(main) == pytest.approx([1.0, 5.0])


@pytest.mark.parametrize("answer, retry_arrives", [
    ("refused", 1.5),  # the connection failed: nothing was sent, the turn is given back
    ("throttled", 3.0),  # a 429 answer at 2 s: the call arrived, and counts until 3 s
    ("timeout", 3.0),  # no answer by the 2 s timeout: it may arrive yet, so it counts until 3 s
])
def test_a_failed_call_counts_unless_nothing_was_sent(answer: str, retry_arrives: float) -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        arrivals: list[float] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            first = not arrivals
            arrivals.append(loop.time() - start)
            if first and answer == "refused":
                await asyncio.sleep(1.5)  # the connection fails after 1.5 s
                raise httpx.ConnectError("connection refused", request=request)
            if first:
                await asyncio.sleep(2.0 if answer == "throttled" else 10.0)
                return httpx.Response(429, json={"code": "Throttling.RateQuota", "message": "slow down"})
            return httpx.Response(200, json=RUNNING)

        limiter = RateLimiter(1, clock=loop.time)
        async with ProviderClient(URL, ["sk"], timeout=2.0, transport=httpx.MockTransport(handler)) as client:
            for attempt in range(2):
                await limiter.acquire()
                try:
                    await client.get("t-1")
                except ProviderTransient:
                    assert attempt == 0
        return arrivals

    assert simulate(main) == pytest.approx([0.0, retry_arrives])


def test_many_waiters_are_served_in_order_and_no_place_is_lost() -> None:
    async def main() -> tuple[list[float], list[int], list[int], int]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, clock=loop.time)
        arrivals: list[float] = []
        asked: list[int] = []
        served: list[int] = []
        async with ProviderClient(URL, ["sk"], transport=provider(arrivals)) as client:
            async def one(i: int) -> None:
                await asyncio.sleep(0.001 * (i % 7))  # ask out of index order
                asked.append(i)
                await limiter.acquire()
                served.append(i)
                await client.get("t-1")

            tasks = [asyncio.create_task(one(i)) for i in range(300)]
            await asyncio.sleep(2.0)
            for i in asked[200:220]:
                tasks[i].cancel()  # gave up waiting
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(1.01)
        return arrivals, asked, served, limiter.held

    arrivals, asked, served, held = simulate(main)
    assert len(arrivals) == 280 and served == asked[:200] + asked[220:]
    assert most_in_a_second(arrivals) <= 20
    # The slots of the 300 turns were reserved at once; the 20 cancelled lost theirs.
    assert arrivals[-1] - arrivals[0] < 300 / 20 * 1.01
    assert held == 0


def test_a_call_made_by_a_task_started_after_the_turn_uses_it() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, clock=loop.time)
        async with ProviderClient(URL, ["sk"], transport=provider([])) as client:
            turn = await limiter.acquire()
            before = turn.expiry()
            await asyncio.create_task(client.get("t-1"))
            return before, turn.expiry() - loop.time()

    before, after = simulate(main)
    assert before == math.inf and after == pytest.approx(1.0)


class SlowNetwork(httpcore.AsyncNetworkBackend):
    """Connections that take `connects[i]` seconds to open, in turn; the provider answers each
    request `answer` seconds after its bytes arrive, and notes when they arrived."""

    def __init__(self, connects: Iterable[float | Exception], answer: float) -> None:
        self.connects = list(connects)
        self.answer = answer
        self.arrivals: list[float] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        connect = self.connects.pop(0)
        if isinstance(connect, Exception):
            raise connect
        await asyncio.sleep(connect)
        return _SlowStream(self)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _SlowStream(httpcore.AsyncNetworkStream):
    ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 56\r\n\r\n"
              b'{"output": {"task_id": "t-1", "task_status": "RUNNING"}}')

    def __init__(self, network: SlowNetwork) -> None:
        self.network = network
        self.asked = 0

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer.startswith(b"GET "):
            self.network.arrivals.append(asyncio.get_running_loop().time())
            self.asked += 1

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self.asked:
            return b""
        self.asked -= 1
        await asyncio.sleep(self.network.answer)
        return self.ANSWER

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str) -> Any:
        return None


class CoreTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport on a simulated network: its requests carry httpcore's `trace`
    extension to the connections, and ProviderClient knows it. (The pool is httpx's private
    attribute: the one way to hand it a network backend.)"""

    def __init__(self, network: httpcore.AsyncNetworkBackend) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(network_backend=network)


def test_a_call_counts_from_when_it_is_written_not_from_when_it_left() -> None:
    """The first call spends 1.5 s opening its connection; the second, paced a second later,
    gets one at once and is written first. The first is written only once the second's place
    is free: a second and the margin after the second was written (its answer is slow)."""
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        network = SlowNetwork(connects=[1.5, 0.0], answer=3.0)
        limiter = RateLimiter(1, clock=loop.time)  # margin 0.25 s
        async with ProviderClient(URL, ["sk"], transport=CoreTransport(network)) as client:
            async def call() -> None:
                await limiter.acquire()
                await client.get("t-1")

            await asyncio.gather(call(), call())
        return [t - start for t in network.arrivals]

    arrivals = simulate(main)
    assert arrivals == pytest.approx([1.0, 2.25]) and most_in_a_second(arrivals) == 1


def test_a_call_whose_connection_fails_takes_no_place() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        network = SlowNetwork(connects=[httpcore.ConnectError("refused"), 0.0], answer=0.01)
        limiter = RateLimiter(1, clock=loop.time)
        async with ProviderClient(URL, ["sk"], transport=CoreTransport(network)) as client:
            await limiter.acquire()
            with pytest.raises(ProviderTransient, match="could not connect"):
                await client.get("t-1")
            assert limiter.held == 0
            await limiter.acquire()
            await client.get("t-1")
            assert limiter.held == 1
        return [t - start for t in network.arrivals]

    assert simulate(main) == pytest.approx([1.0])


def test_a_stalled_event_loop_does_not_turn_reserved_slots_into_a_burst() -> None:
    """Waiters whose slots came while the loop was busy elsewhere wake together; the calls
    they then make still keep to the rate in every second (the fake clock of the tests above,
    whose sleeps come late; calls made through the turns' own interface)."""

    class StallingClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.now += seconds + (0.7 if random.random() < 0.2 else 0.0)  # some wake-ups are late
            await asyncio.sleep(0)

    random.seed(5)
    clock = StallingClock()
    limiter = RateLimiter(20, clock=clock, sleep=clock.sleep)

    async def main() -> list[float]:
        stamps: list[float] = []

        async def caller() -> None:
            for _ in range(25):
                turn = await limiter.acquire()
                await clock.sleep(0.01)  # on its way: perhaps late
                await turn.leave()
                stamps.append(clock())
                turn.answered()

        await asyncio.gather(*(caller() for _ in range(8)))
        return stamps

    stamps = asyncio.run(main())
    assert len(stamps) == 200
    assert most_in_a_second(stamps) <= 20


def test_margin_is_checked() -> None:
    for margin in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="margin"):
            RateLimiter(20, margin=margin)
