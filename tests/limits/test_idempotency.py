"""Idempotency keys over real HTTP, on both databases: a replay answers the first task (same id,
status code and body shape), another body with the same key is refused, concurrent requests
with one key make one task, and a key is free again after 24 hours (and swept)."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select, update

from ref2video.store.models import IdempotencyKey, Task

from tests.live import LiveServer, make_body

from .conftest import assert_throttled

GATEWAY = "/task/bailian/ref2video"
NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}
HOUR_MS = 3600 * 1000


def _tasks(server: LiveServer) -> int:
    with server.service.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Task)).scalar_one())


def _create(client: httpx.Client, key: str, body: dict | None = None, path: str = GATEWAY) -> httpx.Response:  # type: ignore[type-arg]
    return client.post(path, json=body or make_body(), headers={"Idempotency-Key": key, **ASYNC})


def assert_refused(r: httpx.Response, words: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"request_id", "code", "message"} and body["code"] == "InvalidParameter", body
    assert words in body["message"], body


def test_a_replay_answers_the_first_task(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    client = server.client()
    first = _create(client, "order-17")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = _create(client, "order-17")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert set(again.json()) == {"request_id", "output"} and again.json()["request_id"] != first.json()["request_id"]
    assert again.json()["output"] == first.json()["output"]
    # The other route, the same body sent with other spacing and key order: the same request.
    reordered = json.dumps(dict(reversed(list(make_body().items()))), indent=2)
    native = client.post(NATIVE, content=reordered, headers={"Idempotency-Key": "order-17",
                                                             "Content-Type": "application/json", **ASYNC})
    assert native.status_code == 200, native.text
    assert native.json()["output"]["task_id"] == first.json()["output"]["task_id"]
    assert _tasks(server) == 1
    # A new key, or none, makes a new task.
    assert _create(client, "order-18").json()["output"]["task_id"] != first.json()["output"]["task_id"]
    assert client.post(GATEWAY, json=make_body()).status_code == 200
    assert _tasks(server) == 3


def test_a_replay_says_how_the_task_is_now(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    client = server.client()
    task_id = _create(client, "k").json()["output"]["task_id"]
    assert client.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    assert _create(client, "k").json()["output"] == {"task_id": task_id, "task_status": "CANCELED"}


def test_the_same_key_with_another_body_is_refused(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    client = server.client()
    assert _create(client, "k1", make_body(prompt="one")).status_code == 200
    assert_refused(_create(client, "k1", make_body(prompt="two")), "was used with a different request body")
    assert _tasks(server) == 1
    # Keys are the owner's: another owner's "k1" is another key.
    other = server.client(server.new_key("another owner"))
    assert _create(other, "k1", make_body(prompt="two")).status_code == 200
    # The same owner's other key shares the owner's keys.
    assert _create(server.client(server.new_key()), "k1", make_body(prompt="one")).headers["idempotent-replayed"]


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "a\tb"])
def test_a_malformed_key_is_refused(limited: Callable[..., LiveServer], bad: str) -> None:
    server = limited()
    r = server.client().post(GATEWAY, json=make_body(), headers={"Idempotency-Key": bad.encode("latin-1")})  # type: ignore[dict-item]
    assert_refused(r, "Idempotency-Key header must be 1 to 255 printable ASCII characters")
    assert _tasks(server) == 0


def test_concurrent_requests_with_one_key_make_one_task(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    clients = [server.client() for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for key in ("a", "b", "c"):
            answers = list(pool.map(lambda c, k=key: _create(c, k), clients * 2))
            assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
            assert len({r.json()["output"]["task_id"] for r in answers}) == 1
            assert sum("idempotent-replayed" not in r.headers for r in answers) == 1
    assert _tasks(server) == 3


def test_a_refused_create_leaves_the_key_free(limited: Callable[..., LiveServer]) -> None:
    server = limited(max_unfinished_tasks=1)
    client = server.client()
    held = server.create()
    assert_throttled(_create(client, "later"), limit=1)
    assert client.post(f"/api/v1/tasks/{held}/cancel").status_code == 200
    made = _create(client, "later")
    assert made.status_code == 200 and "idempotent-replayed" not in made.headers
    # A replay makes nothing, so the quota does not refuse it.
    again = _create(client, "later")
    assert again.status_code == 200 and again.json()["output"]["task_id"] == made.json()["output"]["task_id"]


def test_keys_expire_after_24_hours_and_are_swept(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    client = server.client()
    first = _create(client, "daily").json()["output"]["task_id"]
    _create(client, "young")
    db = server.service.db
    with db.begin() as conn:  # the key was made 24 hours and a minute ago
        conn.execute(update(IdempotencyKey).where(IdempotencyKey.key == "daily")
                     .values(created_at=IdempotencyKey.created_at - 24 * HOUR_MS - 60_000))
    # Free again, even with another body, before any sweep.
    second = _create(client, "daily", make_body(prompt="another day"))
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert second.json()["output"]["task_id"] != first
    again = _create(client, "daily", make_body(prompt="another day"))
    assert again.json()["output"]["task_id"] == second.json()["output"]["task_id"]
    with db.begin() as conn:
        conn.execute(update(IdempotencyKey).where(IdempotencyKey.key == "daily")
                     .values(created_at=IdempotencyKey.created_at - 25 * HOUR_MS))
    server.service.sweeper.sweep()
    with db.connect() as conn:
        assert conn.execute(select(IdempotencyKey.key)).scalars().all() == ["young"]


def test_a_key_lives_no_longer_than_its_task(limited: Callable[..., LiveServer]) -> None:
    """With a retention shorter than a day, a key is free once its task is past retention."""
    server = limited(retention_hours=1)
    client = server.client()
    first = _create(client, "k").json()["output"]["task_id"]
    with server.service.db.begin() as conn:
        for table in (IdempotencyKey, Task):
            column = table.created_at if table is IdempotencyKey else table.submitted_at
            conn.execute(update(table).values({column: column - HOUR_MS - 1000}))
    second = _create(client, "k").json()["output"]["task_id"]
    assert second != first
