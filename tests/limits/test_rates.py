"""Per-key rate limits over real HTTP, on both databases: a bucket admits its burst, refuses
past it with 429 Throttling.RateQuota, Retry-After and the RateLimit-* headers, and admits again
once the (fake) clock has refilled it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from ref2video.app.limits import CREATE, QUERY, Limits, Rate
from ref2video.store.keys import create_key
from ref2video.store.models import RateBucket, Task

from tests.live import LiveServer, make_body

from .conftest import FakeClock, assert_throttled

GATEWAY = "/task/bailian/ref2video"
NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"


def test_creates_past_the_burst_are_refused_and_admitted_again_later(
        limited: Callable[..., LiveServer], clock: FakeClock) -> None:
    server = limited(rate_create_per_second=2, rate_create_burst=3)
    client = server.client()
    for _ in range(3):
        assert client.post(GATEWAY, json=make_body()).status_code == 200
    refused = client.post(GATEWAY, json=make_body())
    assert_throttled(refused, limit=3, retry_after=1, words="2 create requests a second, 3 at once")
    # The native route shares the bucket; nothing was made by the refusals.
    assert_throttled(client.post(NATIVE, json=make_body(), headers={"X-DashScope-Async": "enable"}), limit=3)
    with server.service.db.connect() as conn:
        assert len(conn.execute(select(Task.id)).all()) == 3
    clock.advance(0.6)  # 2 a second: one token back
    assert client.post(GATEWAY, json=make_body()).status_code == 200
    assert_throttled(client.post(GATEWAY, json=make_body()), limit=3)
    clock.advance(10)  # full again, never more than the burst
    for _ in range(3):
        assert client.post(GATEWAY, json=make_body()).status_code == 200
    assert_throttled(client.post(GATEWAY, json=make_body()), limit=3)


def test_queries_list_and_cancel_share_the_query_bucket(limited: Callable[..., LiveServer], clock: FakeClock) -> None:
    server = limited(rate_query_per_second=1, rate_query_burst=3)
    task_id = server.create()  # creates are not limited here, nor counted as queries
    client = server.client()
    assert client.get(f"/api/v1/tasks/{task_id}").status_code == 200
    assert client.get("/api/v1/tasks").status_code == 200
    assert client.get(f"/task/{task_id}").status_code == 200
    assert_throttled(client.get(f"/api/v1/tasks/{task_id}"), limit=3, retry_after=1, words="1 queries a second")
    assert_throttled(client.post(f"/api/v1/tasks/{task_id}/cancel"), limit=3)
    assert_throttled(client.get("/api/v1/tasks"), limit=3)
    assert server.create()  # the create bucket is another
    clock.advance(1.1)
    assert client.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    assert_throttled(client.get(f"/api/v1/tasks/{task_id}"), limit=3)


def test_retry_after_says_when_the_next_token_is_due(limited: Callable[..., LiveServer], clock: FakeClock) -> None:
    server = limited(rate_query_per_second=0.25, rate_query_burst=1)
    client = server.client()
    assert client.get("/api/v1/tasks").status_code == 200
    assert_throttled(client.get("/api/v1/tasks"), limit=1, retry_after=4)
    clock.advance(2.5)
    assert_throttled(client.get("/api/v1/tasks"), limit=1, retry_after=2)
    clock.advance(1.6)
    assert client.get("/api/v1/tasks").status_code == 200


def test_each_key_has_its_own_buckets(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_query_per_second=1, rate_query_burst=1)
    other_owner, same_owner = server.new_key("someone"), server.new_key()
    assert server.client().get("/api/v1/tasks").status_code == 200
    assert_throttled(server.client().get("/api/v1/tasks"), limit=1)
    assert server.client(other_owner).get("/api/v1/tasks").status_code == 200
    assert server.client(same_owner).get("/api/v1/tasks").status_code == 200  # per key, not per owner


def test_a_bad_key_is_refused_before_any_bucket(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_query_per_second=1, rate_query_burst=1)
    bare = server.client("r2v-nope-nope")
    for _ in range(3):
        assert bare.get("/api/v1/tasks").status_code == 401
    assert server.client().get("/api/v1/tasks").status_code == 200


def test_limits_off_by_default(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)
    assert not server.service.limits.on(CREATE) and not server.service.limits.on(QUERY)
    client = server.client()
    for _ in range(30):
        assert client.get("/api/v1/tasks").status_code == 200
    with server.service.db.connect() as conn:
        assert conn.execute(select(RateBucket.name)).all() == []


def test_processes_sharing_a_postgres_bucket_admit_its_burst_once(pg_url: str, clock: FakeClock) -> None:
    """Two processes' limiters (two `Limits` on one database), leasing in batches: with the
    clock still, exactly the burst is admitted between them, whichever asks; then each token
    the clock adds is admitted once."""
    from ref2video.store.db import make_engine, migrate

    dbs = [make_engine(pg_url) for _ in range(2)]
    migrate(dbs[0])
    try:
        rate = Rate.of(100, 40)
        procs = [Limits(db, query=rate, lease_seconds=0.05, clock=clock) for db in dbs]
        assert all(p.shared for p in procs)
        admitted = refused = 0
        for i in range(200):
            limits = procs[i % 3 % 2]
            try:
                if not limits.admit_now(QUERY, "k1"):
                    limits.admit(QUERY, "k1")
                admitted += 1
            except Exception as exc:  # Throttled
                assert getattr(exc, "code", "") == "Throttling.RateQuota"
                refused += 1
        want = procs[0]._bucket(QUERY, "k1", rate).want  # type: ignore[union-attr]
        assert want == 5
        assert (admitted, refused) == (40, 160)
        clock.advance(0.3)  # 30 more tokens
        more = 0
        for i in range(200):
            limits = procs[i % 2]
            try:
                if not limits.admit_now(QUERY, "k1"):
                    limits.admit(QUERY, "k1")
                more += 1
            except Exception:
                pass
        assert more == 30
        with dbs[0].connect() as conn:
            (row,) = conn.execute(select(RateBucket.name, RateBucket.tokens)).all()
        assert row.name == "query:k1" and row.tokens < 1
    finally:
        for db in dbs:
            db.dispose()


def test_a_lease_of_zero_takes_one_token_at_a_time(pg_url: str, clock: FakeClock) -> None:
    from ref2video.store.db import make_engine, migrate

    db = make_engine(pg_url)
    migrate(db)
    try:
        with db.begin() as conn:
            key_id = create_key(conn)[1].id
        limits = Limits(db, create=Rate.of(1000, 10), lease_seconds=0, clock=clock)
        for expected in range(9, -1, -1):
            limits.admit(CREATE, key_id)
            with db.connect() as conn:
                tokens = conn.execute(select(RateBucket.tokens)).scalar_one()
            assert tokens == pytest.approx(expected)
    finally:
        db.dispose()
