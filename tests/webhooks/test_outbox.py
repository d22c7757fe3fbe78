"""The outbox on both databases, without HTTP: messages commit with the transition that causes
them or not at all, one per (task, event, endpoint); leases and their fences; backoff; the
schema agrees with the models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select

from ref2video.app import outbox, transitions, webhooks
from ref2video.app.outbox import Backoff, message_id
from ref2video.app.transitions import Held
from ref2video.spec import parse_spec
from ref2video.store import webhooks as store
from ref2video.store.db import is_postgres, make_engine, migrate, now_ms
from ref2video.store.keys import Principal
from ref2video.store.models import Base, OutboxMessage, Task
from ref2video.store.webhooks import OutboxRow

from tests.live import make_body

from .conftest import outbox as rows_of

MODEL = "wan2.6-r2v-flash"


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _create(db: Engine, owner: str = "acme", callback: str | None = "https://cb.example.com/hook") -> str:
    with db.begin() as conn:
        return transitions.create(conn, parse_spec(make_body(), [MODEL]), Principal("k1", owner),
                                  callback_url=callback).id


def _claim(db: Engine, token: str) -> None:
    with db.begin() as conn:
        assert transitions.claim(conn, [MODEL], token, lease_ms=60_000, skip_locked=is_postgres(db),
                                 columns=[Task.id]) is not None


def test_the_schema_matches_the_models(db: Engine) -> None:
    with db.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_messages_commit_with_the_transition_or_not_at_all(db: Engine) -> None:
    endpoint, _ = webhooks.add(db, "acme", "https://hooks.example.com/all")
    webhooks.add(db, "acme", "https://hooks.example.com/ends", ["task.succeeded", "task.failed"])
    webhooks.add(db, "someone-else", "https://hooks.example.com/theirs")
    task_id = _create(db)

    with pytest.raises(RuntimeError), db.begin() as conn:  # a claim that rolls back
        transitions.claim(conn, [MODEL], "t0", lease_ms=60_000, skip_locked=is_postgres(db), columns=[Task.id])
        assert len(conn.execute(select(OutboxMessage.id)).all()) == 2  # written in this transaction ...
        raise RuntimeError
    assert rows_of(db) == []  # ... and went with it
    with db.connect() as conn:
        assert conn.execute(select(Task.status).where(Task.id == task_id)).scalar() == "PENDING"

    _claim(db, "t1")
    running = rows_of(db)
    assert {(r.event, r.endpoint_id, r.url) for r in running} == {
        ("task.running", endpoint.id, "https://hooks.example.com/all"),
        ("task.running", None, "https://cb.example.com/hook"),
    }
    assert {r.message_id for r in running} == {message_id(task_id, "task.running", e) for e in (endpoint.id, None)}
    assert all(r.payload["data"]["task_status"] == "RUNNING" and r.payload["data"]["attempt"] == 1 for r in running)

    # Given back and claimed again: task.running is not announced twice.
    with db.begin() as conn:
        assert transitions.release(conn, Held(task_id, "t1")) is not None
    _claim(db, "t2")
    assert len(rows_of(db)) == 2

    with db.begin() as conn:
        transitions.succeed(conn, Held(task_id, "t2"), result_key="r.mp4", usage={"duration": 5}, engine="scripted")
    ended = [r for r in rows_of(db) if r.event == "task.succeeded"]
    assert len(ended) == 3  # /all, /ends and the callback; not someone else's endpoint
    assert all(r.payload["data"]["usage"] == {"duration": 5} and r.payload["type"] == "task.succeeded" for r in ended)
    assert all("video_url" not in r.payload["data"] for r in ended)


def test_a_removed_endpoint_gets_nothing_more(db: Engine) -> None:
    endpoint, _ = webhooks.add(db, "acme", "https://hooks.example.com/gone")
    task_id = _create(db, callback=None)
    _claim(db, "t1")
    assert webhooks.remove(db, "acme", endpoint.id) and not webhooks.remove(db, "acme", endpoint.id)
    (row,) = rows_of(db)
    assert row.given_up_at is not None and row.last_error == "the endpoint was removed"
    with db.begin() as conn:
        transitions.fail(conn, Held(task_id, "t1"), "Boom", "no", engine=None)
    assert len(rows_of(db)) == 1  # no endpoint left, no callback: nothing queued
    assert webhooks.list(db, "acme") == [] and webhooks.secret(db, "acme", endpoint.id) is None


def test_a_message_whose_endpoint_went_meanwhile_is_given_up_at_claim(db: Engine) -> None:
    endpoint, _ = webhooks.add(db, "acme", "https://hooks.example.com/racing")
    _create(db)
    _claim(db, "t1")
    with db.begin() as conn:  # disabled, its messages left open (a remove racing a claim)
        store.disable_endpoint(conn, "acme", endpoint.id, now_ms())
    (claimed,) = outbox.claim(db, limit=10, lease_ms=60_000)
    assert claimed.message.endpoint_id is None and claimed.secret == webhooks.secret(db, "acme")
    gone = [r for r in rows_of(db) if r.endpoint_id == endpoint.id]
    assert gone[0].given_up_at is not None


def test_a_lease_keeps_a_message_to_one_sender_and_fences_late_writes(db: Engine) -> None:
    webhooks.add(db, "acme", "https://hooks.example.com/x", ["task.running"])
    _create(db, callback=None)
    _claim(db, "t1")
    (first,) = outbox.claim(db, limit=10, lease_ms=60_000)
    assert outbox.claim(db, limit=10, lease_ms=60_000) == []  # leased: nobody else takes it
    with db.begin() as conn:  # its lease lapses
        conn.execute(OutboxMessage.__table__.update().values(lease_until=now_ms() - 1))
    (second,) = outbox.claim(db, limit=10, lease_ms=60_000)
    assert second.message.message_id == first.message.message_id and second.message.attempts == 2
    backoff = Backoff(1.0, 10.0, 3600.0)
    assert outbox.record(db, first.message, None, backoff) is None  # no longer the first's
    assert outbox.record(db, second.message, "HTTP 500", backoff) == "retry"
    assert outbox.record(db, second.message, None, backoff) is None  # already recorded
    (row,) = rows_of(db)
    assert row.delivered_at is None and row.last_error == "HTTP 500" and row.lease_until is None


def test_a_stopping_sender_hands_back_what_it_did_not_try(db: Engine) -> None:
    webhooks.add(db, "acme", "https://hooks.example.com/x", ["task.running"])
    _create(db, callback=None)
    _claim(db, "t1")
    (claimed,) = outbox.claim(db, limit=10, lease_ms=60_000)
    outbox.release(db, [claimed.message])
    (again,) = outbox.claim(db, limit=10, lease_ms=60_000)
    assert again.message.attempts == 1


def _message(created_at: int, attempts: int) -> OutboxRow:
    return OutboxRow(id=1, message_id="m", owner="o", endpoint_id=None, url="u", event="e", task_id="t", payload={},
                     created_at=created_at, next_at=created_at, attempts=attempts, delivered_at=None,
                     given_up_at=None, last_error=None)


def test_backoff_doubles_to_its_cap_and_gives_up_at_the_end_of_the_window() -> None:
    backoff = Backoff(first_s=5, max_s=3600, window_s=86400)
    start = 1_000_000
    waits = [backoff.next_at(_message(start, n), start) - start for n in range(1, 12)]  # type: ignore[operator]
    assert waits == [5000, 10000, 20000, 40000, 80000, 160000, 320000, 640000, 1280000, 2560000, 3600000]
    end = start + 86_400_000
    assert backoff.next_at(_message(start, 30), end - 1000) == end  # the last attempt falls at the end
    assert backoff.next_at(_message(start, 31), end) is None


def test_endpoint_registration_checks_its_input(db: Engine) -> None:
    from ref2video.errors import InvalidParameter

    for url in ("ftp://x.example.com/", "https://user:pw@x.example.com/", "nohost", "", "http://x.example.com:0x/"):
        with pytest.raises(InvalidParameter):
            webhooks.add(db, "acme", url)
    with pytest.raises(InvalidParameter):
        webhooks.add(db, "acme", "https://x.example.com/", ["task.exploded"])
    endpoint, secret = webhooks.add(db, "acme", " https://x.example.com/a ", ["task.failed", "task.running"])
    assert endpoint.url == "https://x.example.com/a" and endpoint.events == ["task.running", "task.failed"]
    assert secret.startswith("whsec_") and webhooks.secret(db, "acme", endpoint.id) == secret
    assert webhooks.secret(db, "acme") == webhooks.secret(db, "acme") != secret
    assert webhooks.secret(db, "acme") != webhooks.secret(db, "other")
    for _ in range(webhooks.MAX_ENDPOINTS - 1):
        webhooks.add(db, "acme", "https://x.example.com/more")
    with pytest.raises(InvalidParameter):
        webhooks.add(db, "acme", "https://x.example.com/too-many")
