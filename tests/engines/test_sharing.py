"""Relay processes on one database share each provider account's rate limits
(engines/dashscope/sharing.py): the share arithmetic and its timing on a fake clock, then two
relays sharing one key against the imitation provider of bench/upstream.py, which counts
arrivals per key in every sliding second, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import insert, select

from bench import upstream as fake_provider
from ref2video.engines.dashscope.journal import Member
from ref2video.engines.dashscope import DashscopeEngine, RateLimiter
from ref2video.engines.dashscope.sharing import FRESH, JOIN_WAIT, LIVE, RateShare, share
from ref2video.engines.dashscope.submit import account_of
from ref2video.queue.journal import TableJournal
from ref2video.store.db import now_ms
from ref2video.store.models import RelayMember, Task
from tests.live import LiveServer, free_port, settings_for, start_server
from tests.relay.relays import RELAYED, wait_for

# -- the arithmetic ---------------------------------------------------------------------------


def test_places_are_dealt_out_in_order_of_name_and_never_add_up_to_more() -> None:
    assert [share(20, me, "abc") for me in "abc"] == [7, 7, 6]
    assert share(20, "a", ["a"]) == 20
    for rate in (1, 2, 5, 20, 50, 20.5, 0.5):
        for n in range(1, 30):
            names = [f"p{i:02}" for i in range(n)]
            shares = [share(rate, me, names) for me in names]
            places = [RateLimiter(s).capacity for s in shares if s]
            assert sum(places) <= max(1, int(rate)), (rate, n)
            assert sum(shares) <= rate + 1e-9
            if n <= rate:
                assert all(shares), "every member has a place while there are enough"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sharing(clock: Clock, query_rate: float = 20, submit_rate: float = 5) -> RateShare:
    return RateShare(["acct"], [RateLimiter(query_rate, clock=clock)], [RateLimiter(submit_rate, clock=clock)],
                     query_rate=query_rate, submit_rate=submit_rate, clock=clock)


def members(*names: str, query_rate: float = 20, submit_rate: float = 5) -> list[Member]:
    return [Member(name, "acct", query_rate, submit_rate) for name in names]


def beat(s: RateShare, clock: Clock, me: str, view: list[Member], seconds: float) -> None:
    """`seconds` of views once a second (the heartbeat), ending `seconds` from now."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + 1.0)
        s.seen(clock.now, me, view)


def rates(s: RateShare) -> tuple[float, float]:
    _, query, submit = s.limiters[0]
    return query.rate, submit.rate


def test_nothing_is_given_before_the_first_view_and_a_lone_process_gets_all_at_once() -> None:
    clock = Clock()
    s = sharing(clock)
    assert rates(s) == (0, 0) and s.joining
    s.seen(clock.now, "a", members("a"))
    assert rates(s) == (20, 5) and not s.joining


def test_a_joiner_waits_until_the_others_can_have_seen_it_and_they_give_way_at_once() -> None:
    clock = Clock()
    old, new = sharing(clock), sharing(clock)
    old.seen(clock.now, "a", members("a"))
    new.seen(clock.now, "b", members("a", "b"))
    assert rates(new) == (0, 0), "it uses nothing while the others may not know it yet"
    clock.now += 0.5
    old.seen(clock.now, "a", members("a", "b"))
    assert rates(old) == (10, 3)  # the submit rate's 5 places: 3 and 2
    beat(new, clock, "b", members("a", "b"), JOIN_WAIT - 0.5 - 0.01)
    assert rates(new) == (0, 0)
    beat(new, clock, "b", members("a", "b"), 0.02)
    assert rates(new) == (10, 2)


def test_a_stale_view_stops_the_process_and_the_next_one_is_a_join() -> None:
    clock = Clock()
    s = sharing(clock)
    s.seen(clock.now, "a", members("a", "b"))
    beat(s, clock, "a", members("a", "b"), JOIN_WAIT)
    assert rates(s) == (10, 3)
    clock.now += FRESH + 0.1
    assert s.joining
    s.lapse()  # what the timer does when no view came in time
    assert rates(s) == (0, 0)
    s.seen(clock.now, "a", members("a", "b"))
    assert rates(s) == (0, 0), "the others may have dropped it: it joins again"
    beat(s, clock, "a", members("a", "b"), JOIN_WAIT)
    assert rates(s) == (10, 3)


def test_the_lowest_rate_any_member_was_given_is_the_limit() -> None:
    clock = Clock()
    s = sharing(clock)
    view = [*members("a"), *members("b", query_rate=8, submit_rate=50)]
    s.seen(clock.now, "a", view)
    beat(s, clock, "a", view, JOIN_WAIT)
    assert rates(s) == (4, 3)
    s.seen(clock.now, "a", members("a"))  # b left
    assert rates(s) == (20, 5)


def test_a_reshaped_limiter_gives_nothing_at_zero_and_goes_on_when_raised() -> None:
    async def main() -> None:
        limiter = RateLimiter(5)
        limiter.reshape(0)
        assert limiter.capacity == 0
        waiting = asyncio.create_task(limiter.acquire())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        limiter.reshape(2)
        assert limiter.capacity == 2
        turn = await waiting
        await turn.leave()
        assert limiter.held == 1

    asyncio.run(main())


# -- two relays, one key, one database --------------------------------------------------------

KEY = "shared-key"
RATE = 4  # the provider's limit per key, for queries and for submits alike


@pytest.fixture
def provider() -> Iterator[fake_provider.Upstream]:
    """The imitation provider on loopback: tasks run a minute, so they stay in flight."""
    port = free_port()
    config = fake_provider.Config(keys=(KEY,), rate=RATE, submit_rate=RATE, min_seconds=60, max_seconds=120,
                                  fail_rate=0.0, seed=1, video=b"", base_url=f"http://127.0.0.1:{port}")
    app = fake_provider.build_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the provider started")
    upstream: fake_provider.Upstream = app.state.upstream
    upstream.config = config
    yield upstream
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def relays(tmp_path: Path, database_url: str,
           provider: fake_provider.Upstream) -> Iterator[Callable[[str], LiveServer]]:
    """Start relays of the provider's one key on one database; all stopped at the end."""
    started: list[LiveServer] = []

    def start(name: str) -> LiveServer:
        values: dict[str, Any] = dict(models=RELAYED, dashscope_base_url=f"{provider.config.base_url}/api/v1",
                                      dashscope_api_keys=[KEY], dashscope_query_rate=RATE,
                                      dashscope_submit_rate=RATE, dashscope_timeout=3.0, dashscope_max_in_flight=16)
        server = start_server(settings_for(tmp_path / name, database_url, **values))
        started.append(server)
        return server

    yield start
    for server in started:
        if server._thread.is_alive():
            server.stop()


def engine_of(server: LiveServer) -> DashscopeEngine:
    (engine,) = [e for e in server.service.held.engines if isinstance(e, DashscopeEngine)]
    return engine


def token_of(server: LiveServer) -> str:
    (host,) = server.service.held.hosts
    assert isinstance(host.journal, TableJournal)
    return host.journal.token


def submit_capacity(server: LiveServer) -> int:
    return engine_of(server).submit_limiters[0].capacity


def test_two_relays_sharing_a_key_keep_to_its_limit_together(relays: Callable[[str], LiveServer],
                                                              provider: fake_provider.Upstream) -> None:
    a = relays("a")
    wait_for(lambda: submit_capacity(a) == RATE, what="a alone has the full rate")
    b = relays("b")
    wait_for(lambda: submit_capacity(b) == RATE // 2 and submit_capacity(a) == RATE // 2,
             what="a and b each have half")
    # Eight seconds of submits at the limit, then their polls; each relay holds 16 at most, so
    # each submits the half created through it.
    ids = [a.create() for _ in range(16)]
    ids += [b.create() for _ in range(16)]

    def submitted() -> bool:
        with a.service.db.connect() as conn:
            rows = conn.execute(select(Task.upstream_id).where(Task.id.in_(ids))).all()
        return all(row.upstream_id for row in rows)

    wait_for(submitted, timeout=60, what="every task submitted")
    tokens = {token_of(a), token_of(b)}
    with a.service.db.connect() as conn:
        holders = set(conn.execute(select(Task.lease_token).where(Task.id.in_(ids))).scalars())
    assert holders == tokens, "both relays took part"
    account = provider.accounts[KEY]
    assert account.submits.calls >= len(ids)
    assert account.submits.max_per_s <= RATE, "the provider never saw more submits in a second than its limit"
    assert account.queries.max_per_s <= RATE
    assert account.submits.throttled == account.queries.throttled == 0
    assert engine_of(a).sharing.members[account_of(KEY)] == 2

    b.stop()
    wait_for(lambda: submit_capacity(a) == RATE and engine_of(a).query_limiters[0].capacity == RATE,
             what="a has the full rate again once b left")


def test_a_member_that_stops_announcing_is_dropped_after_its_liveness(relays: Callable[[str], LiveServer]) -> None:
    a = relays("a")
    wait_for(lambda: submit_capacity(a) == RATE, what="a alone has the full rate")
    with a.service.db.begin() as conn:  # a process that announced once and died
        conn.execute(insert(RelayMember).values(process="0-dead", account=account_of(KEY), query_rate=RATE,
                                                submit_rate=RATE, expires_at=now_ms() + int(LIVE * 1000)))
    wait_for(lambda: submit_capacity(a) == RATE // 2, what="a gives the dead member its share")
    wait_for(lambda: submit_capacity(a) == RATE, timeout=LIVE + 30, what="the dead member is dropped")
    assert engine_of(a).sharing.members[account_of(KEY)] == 1
