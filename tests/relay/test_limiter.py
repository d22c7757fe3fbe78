"""`RateLimiter` (against a fake clock and the real one) and `PollSchedule`."""

from __future__ import annotations

import asyncio
import bisect
import random
import time
import tracemalloc

import pytest

from ref2video.engines.dashscope import PollSchedule, RateLimiter


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


def test_real_time_60_acquires_at_50_per_second() -> None:
    limiter = RateLimiter(50, burst=1)

    async def main() -> list[float]:
        stamps: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            stamps.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(60)))
        return stamps

    started = time.monotonic()
    stamps = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert 59 / 50 <= elapsed < 59 / 50 + 1.0
    # Stamps are taken after the loop wakes the waiter, a little late and unevenly so; the
    # grants themselves never exceed the rate (the fake-clock test), the stamps the rate + burst.
    assert most_in_a_second(stamps) <= 50 + 1


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
    limiter = RateLimiter(20, burst=1)

    async def main() -> list[float]:
        stamps: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            stamps.append(time.monotonic())

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.01)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stamps

    stamps = asyncio.run(main())
    assert len(stamps) == 5
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.04  # 1/20 s apart (less timer jitter); the lost slot shows as one 0.1 s gap


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
    started = time.perf_counter()
    now, seen = 0.0, 0
    while now < 120:  # two simulated minutes: every task polled on its schedule
        for task_id in schedule.due(now):
            seen += 1
            if seen % 7 == 0:
                schedule.remove(task_id)  # finished
            else:
                schedule.polled(task_id, now)
        now += 0.25
    assert time.perf_counter() - started < 2.0
    assert len(schedule._heap) <= 2 * len(schedule) + 1100  # stale entries do not pile up
    assert 20_000 < seen < 100_000


def test_a_stalled_event_loop_does_not_turn_reserved_slots_into_a_burst() -> None:
    """Waiters whose slots came while the loop was busy elsewhere wake together; the grants
    they then make still keep to the rate in every second."""

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
                await limiter.acquire()
                stamps.append(clock())

        await asyncio.gather(*(caller() for _ in range(8)))
        return stamps

    stamps = asyncio.run(main())
    assert len(stamps) == 200
    assert most_in_a_second(stamps) <= 20
