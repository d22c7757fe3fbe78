"""A key's own rate limits over real HTTP, on both databases: set through the admin API (admin
keys only, bad values a 400 naming the field), they replace the settings' for that key alone
(a rate of 0: no limit), and a change takes effect without a restart: at once on the server
that made it, within the authenticator's second on every other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ref2video.app import keys as key_admin

from tests.live import LiveServer, make_body

from .conftest import FakeClock, assert_throttled

GATEWAY = "/task/bailian/ref2video"
TASKS = "/api/v1/tasks"


def admin(server: LiveServer) -> httpx.Client:
    key, _ = key_admin.create_key(server.service.db, owner="operator", role="admin")
    return server.client(key)


def make_key(operator: httpx.Client, **limits: Any) -> tuple[str, str]:
    """(key, id) of a new key for owner acme, made over the admin API with `limits`."""
    r = operator.post("/admin/v1/keys", json={"owner": "acme", **limits})
    assert r.status_code == 200, r.text
    return r.json()["key"], r.json()["id"]


def admitted(client: httpx.Client, times: int, path: str = TASKS) -> int:
    """How many of `times` queries (the clock still) pass before the first refusal."""
    for n in range(times):
        r = client.get(path)
        if r.status_code != 200:
            assert r.status_code == 429, r.text
            return n
    return times


def test_a_key_with_its_own_lower_rate_is_refused_where_a_default_key_is_not(
        limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_query_per_second=10, rate_query_burst=10, rate_create_per_second=10, rate_create_burst=10)
    operator = admin(server)
    key, key_id = make_key(operator, rate_query_per_second=1, rate_query_burst=2, rate_create_per_second=0.5)
    own, default = server.client(key), server.client(server.new_key("acme"))

    assert admitted(own, 5) == 2
    assert_throttled(own.get(TASKS), limit=2, retry_after=1, words="1 queries a second, 2 at once")
    assert admitted(default, 10) == 10  # the same owner's other key keeps the settings'
    assert_throttled(default.get(TASKS), limit=10, words="10 queries a second, 10 at once")

    # Its create rate is its own, its burst the settings' (10).
    for _ in range(10):
        assert own.post(GATEWAY, json=make_body()).status_code == 200
    assert_throttled(own.post(GATEWAY, json=make_body()), limit=10, retry_after=2,
                     words="0.5 create requests a second, 10 at once")
    listed = {k["id"]: k for k in operator.get("/admin/v1/keys").json()["keys"]}[key_id]
    assert (listed["rate_query_per_second"], listed["rate_query_burst"]) == (1, 2)
    assert (listed["rate_create_per_second"], listed["rate_create_burst"]) == (0.5, None)
    assert listed["limits"] == {"create": {"per_second": 0.5, "burst": 10}, "query": {"per_second": 1, "burst": 2}}


def test_a_key_with_a_rate_of_zero_is_never_limited(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_query_per_second=1, rate_query_burst=1)
    key, _ = make_key(admin(server), rate_query_per_second=0)
    free = server.client(key)
    assert admitted(free, 50) == 50
    assert admitted(server.client(), 50) == 1  # the default key, by the same settings


def test_a_key_may_be_limited_where_the_settings_limit_nobody(limited: Callable[..., LiveServer]) -> None:
    server = limited()  # every setting 0: no limits
    key, _ = make_key(admin(server), rate_query_per_second=2)  # burst: the settings' 0, the rate rounded up
    assert admitted(server.client(key), 10) == 2
    assert admitted(server.client(), 50) == 50


def test_a_change_through_the_admin_api_takes_effect_at_once(
        limited: Callable[..., LiveServer], clock: FakeClock) -> None:
    server = limited(rate_query_per_second=10, rate_query_burst=10)
    operator = admin(server)
    key, key_id = make_key(operator)
    client = server.client(key)
    assert admitted(client, 3) == 3

    # Lowered: the bucket keeps what it holds (7), down to the new burst (2); on PostgreSQL the
    # shared row is capped by the burst each lease statement is given.
    r = operator.put(f"/admin/v1/keys/{key_id}/limits", json={"rate_query_per_second": 1, "rate_query_burst": 2})
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["query"] == {"per_second": 1, "burst": 2} and r.json()["rate_create_burst"] is None
    assert admitted(client, 5) == 2
    assert_throttled(client.get(TASKS), limit=2, words="1 queries a second, 2 at once")

    # Raised: nothing held yet, then it fills at the new rate up to the new burst.
    assert operator.put(f"/admin/v1/keys/{key_id}/limits", json={"rate_query_per_second": 5,
                                                                  "rate_query_burst": 8}).status_code == 200
    assert_throttled(client.get(TASKS), limit=8, words="5 queries a second, 8 at once")
    clock.advance(10)
    assert admitted(client, 20) == 8

    # Lifted, then back to the settings' (null), which hold nothing until the clock moves.
    assert operator.put(f"/admin/v1/keys/{key_id}/limits", json={"rate_query_per_second": 0}).status_code == 200
    assert admitted(client, 30) == 30
    back = operator.put(f"/admin/v1/keys/{key_id}/limits", json={"rate_query_per_second": None,
                                                                 "rate_query_burst": None})
    assert back.json()["limits"]["query"] == {"per_second": 10, "burst": 10}
    assert_throttled(client.get(TASKS), limit=10)
    clock.advance(1)
    assert admitted(client, 20) == 10


def test_a_change_made_elsewhere_takes_effect_within_the_authenticators_time_to_live(
        limited: Callable[..., LiveServer], clock: FakeClock) -> None:
    """As another process (or the CLI) would: straight on the database, nothing forgotten here."""
    server = limited(rate_query_per_second=100, rate_query_burst=100)
    server.service.auth.clock = clock  # the time to live runs on the test's clock too
    key, info = key_admin.create_key(server.service.db, owner="acme")
    client = server.client(key)
    assert admitted(client, 3) == 3
    assert key_admin.set_rates(server.service.db, info.id, {"rate_query_per_second": 1, "rate_query_burst": 1})
    assert admitted(client, 5) == 5  # still remembered with the settings' limits
    clock.advance(server.service.auth.ttl)
    assert admitted(client, 5) == 1
    assert_throttled(client.get(TASKS), limit=1, words="1 queries a second, 1 at once")


def test_ordinary_keys_cannot_set_limits(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_query_per_second=1, rate_query_burst=1)
    key, info = key_admin.create_key(server.service.db, owner="acme")
    ordinary = server.client(key)
    for method, path, body in (("PUT", f"/admin/v1/keys/{info.id}/limits", {"rate_query_per_second": 0}),
                               ("POST", "/admin/v1/keys", {"owner": "acme", "rate_query_per_second": 0})):
        r = ordinary.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["code"] == "AccessDenied", r.text
    assert [k.rates for k in key_admin.list_keys(server.service.db) if k.id == info.id] == [key_admin.KeyRates()]
    assert admitted(ordinary, 5) == 1


BAD = [
    ({"rate_create_per_second": -1}, "rate_create_per_second"),
    ({"rate_query_per_second": "fast"}, "rate_query_per_second"),
    ({"rate_query_per_second": True}, "rate_query_per_second"),
    ({"rate_create_per_second": 1e10}, "rate_create_per_second"),
    ({"rate_query_burst": 2.5}, "rate_query_burst"),
    ({"rate_create_burst": -3}, "rate_create_burst"),
    ({"rate_create_burst": 2**40}, "rate_create_burst"),
    ({"rate_query_burst": "3"}, "rate_query_burst"),
]


def test_bad_values_are_a_400_naming_the_field(server: LiveServer) -> None:
    operator = admin(server)
    _, key_id = make_key(operator)
    before = len(key_admin.list_keys(server.service.db))

    def refused(r: httpx.Response, field: str) -> None:
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"request_id", "code", "message"} and r.json()["code"] == "InvalidParameter"
        assert field in r.json()["message"], r.json()

    for body, field in BAD:
        refused(operator.put(f"/admin/v1/keys/{key_id}/limits", json=body), field)
        refused(operator.post("/admin/v1/keys", json={"owner": "acme", **body}), field)
    refused(operator.put(f"/admin/v1/keys/{key_id}/limits", content=b'{"rate_query_per_second": NaN}'),
            "rate_query_per_second")
    refused(operator.put(f"/admin/v1/keys/{key_id}/limits", json={"rate_query_per_secnd": 1}), "rate_query_per_secnd")
    refused(operator.put(f"/admin/v1/keys/{key_id}/limits", json=[1]), "JSON object")
    assert len(key_admin.list_keys(server.service.db)) == before  # no key made by a refused create
    assert [k.rates for k in key_admin.list_keys(server.service.db) if k.id == key_id] == [key_admin.KeyRates()]

    missing = operator.put("/admin/v1/keys/nope/limits", json={"rate_query_per_second": 1})
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
    assert operator.delete(f"/admin/v1/keys/{key_id}").status_code == 200
    assert operator.put(f"/admin/v1/keys/{key_id}/limits", json={}).status_code == 404  # revoked: not live


@pytest.mark.parametrize("field", ["rate_create_per_second", "rate_query_per_second"])
def test_the_admin_api_answers_the_limits_in_effect(server: LiveServer, field: str) -> None:
    """With every setting 0 (the default) a key has no limit unless it sets one."""
    operator = admin(server)
    _, key_id = make_key(operator)
    kind = field.split("_")[1]
    r = operator.put(f"/admin/v1/keys/{key_id}/limits", json={field: 2.5})
    assert r.json()["limits"] == {"create": None, "query": None, kind: {"per_second": 2.5, "burst": 3}}


def test_a_shared_bucket_honours_the_burst_each_process_asks_for(pg_url: str, clock: FakeClock) -> None:
    """Two processes on one PostgreSQL bucket, one of which has read the key's lowered burst:
    the row it leases from is capped at that burst, whatever the other left in it."""
    from ref2video.app.limits import QUERY, Limits
    from ref2video.store.db import make_engine, migrate

    dbs = [make_engine(pg_url) for _ in range(2)]
    migrate(dbs[0])
    try:
        before = key_admin.KeyRates(rate_query_per_second=10, rate_query_burst=10)
        after = key_admin.KeyRates(rate_query_per_second=1, rate_query_burst=2)
        old, new = (Limits(db, lease_seconds=0.05, clock=clock) for db in dbs)
        for _ in range(3):  # a lease of 4 from the full row: 6 left there
            if not old.admit_now(QUERY, "k1", before):
                old.admit(QUERY, "k1", before)
        taken = 0
        for _ in range(5):
            try:
                if not new.admit_now(QUERY, "k1", after):
                    new.admit(QUERY, "k1", after)
                taken += 1
            except Exception as exc:  # Throttled
                assert getattr(exc, "headers", {}).get("RateLimit-Limit") == "2"
        assert taken == 2
    finally:
        for db in dbs:
            db.dispose()
