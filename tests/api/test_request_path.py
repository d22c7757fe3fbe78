"""The request path's batches (app.batches, app.reads): creates and polls awaited together on
the event loop each get their own answer, whatever the others meet."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from ref2video.app import tasks, transitions
from ref2video.app.batches import creates_for
from ref2video.spec import parse_spec
from ref2video.store.db import is_postgres, make_engine, migrate
from ref2video.store.keys import Principal

from tests.live import make_body

DAY_MS = 86_400_000
OWNER = Principal("key1", "owner1")


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _spec() -> Any:
    return parse_spec(make_body(urls=["https://example.com/a.png"]), ["wan2.6-r2v-flash"])


def _count(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar_one())


def _lock(db: Engine) -> Any:
    return contextlib.nullcontext() if is_postgres(db) else threading.Lock()


def _run(db: Engine, work: Any) -> Any:
    """`asyncio.run(work)`, then what the loop held let go of (its PostgreSQL pool)."""

    async def then_release() -> Any:
        try:
            return await work
        finally:
            await tasks.release(db)

    return asyncio.run(then_release())


def test_creates_awaited_together_each_get_their_task(db: Engine) -> None:
    creates = creates_for(db, write_lock=_lock(db))

    async def burst() -> list[Any]:
        return await asyncio.gather(*(creates.add(_spec(), OWNER) for _ in range(12)))

    made = _run(db, burst())
    assert len({t.id for t in made}) == 12 and _count(db) == 12
    for task in made:
        assert _run(db, tasks.get(db, OWNER, task.id, retention_ms=DAY_MS)) == \
            tasks.get_blocking(db, OWNER, task.id, retention_ms=DAY_MS)


def test_one_failing_create_fails_alone(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    creates = creates_for(db, write_lock=_lock(db))
    real = transitions.create_many

    def refusing(conn: Any, new: Any, **options: Any) -> Any:
        if any(principal.owner == "refused" for _, principal in new):
            raise RuntimeError("refused")
        return real(conn, new, **options)

    monkeypatch.setattr(transitions, "create_many", refusing)

    async def burst() -> list[Any]:
        owners = ["refused" if i == 3 else OWNER.owner for i in range(8)]
        return await asyncio.gather(*(creates.add(_spec(), Principal("k", o)) for o in owners), return_exceptions=True)

    answers = _run(db, burst())
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert [str(e) for e in errors] == ["refused"] and isinstance(answers[3], RuntimeError)
    assert _count(db) == 7


def test_sqlite_creates_wait_for_a_held_lock_in_a_thread(tmp_path: Any) -> None:
    """The loop never waits for a lock: a batch that meets one (this process's write lock, or
    SQLite's, held by another connection) is inserted by the thread once it is free."""
    db = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(db)
    try:
        lock = threading.Lock()
        creates = creates_for(db, write_lock=lock)

        async def burst() -> None:
            await asyncio.gather(*(creates.add(_spec(), OWNER) for _ in range(5)))

        def held_back(release: Callable[[], object]) -> float:
            """Seconds until a burst is in, timed from before the lock is let go 0.3 s later: a
            floor that a busy machine can only raise."""
            started = time.monotonic()
            threading.Timer(0.3, release).start()
            asyncio.run(burst())
            return time.monotonic() - started

        lock.acquire()
        assert held_back(lock.release) >= 0.29 and _count(db) == 5

        other = db.raw_connection()
        try:
            other.driver_connection.execute("BEGIN IMMEDIATE")  # SQLite's write lock, elsewhere
            assert held_back(lambda: other.driver_connection.execute("COMMIT")) >= 0.29 and _count(db) == 10
        finally:
            other.close()
    finally:
        db.dispose()


def test_polls_awaited_together_each_get_their_answer(db: Engine) -> None:
    """On PostgreSQL one statement answers them all: each answer is its asker's."""
    with db.begin() as conn:
        made = [transitions.create(conn, _spec(), OWNER) for _ in range(5)]
    stranger = Principal("k2", "someone else")
    asked = [(OWNER, t.id) for t in made] + [(OWNER, "no-such-task"), (stranger, made[0].id), (OWNER, made[2].id)]

    async def polls() -> list[Any]:
        return await asyncio.gather(*(tasks.get(db, who, i, retention_ms=DAY_MS) for who, i in asked))

    answers = _run(db, polls())
    assert [a.id for a in answers[:5]] == [t.id for t in made]
    assert answers[5] is None and answers[6] is None and answers[7] == answers[2]
    for answer in answers[:5]:
        assert answer == tasks.get_blocking(db, OWNER, answer.id, retention_ms=DAY_MS)


def test_billed_creates_awaited_together_hold_each_and_refuse_only_what_a_balance_cannot_cover(
        db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holds and the quota run in the batch's transaction; an owner in arrears fails the batch,
    which is then tried create by create: each gets its own answer, and the books stay exact."""
    from zoneinfo import ZoneInfo

    from ref2video.app import accounts, ledger
    from ref2video.app.ledger import Prices
    from ref2video.config import LIST_PRICES
    from ref2video.errors import Arrearage

    tz = ZoneInfo("Asia/Shanghai")
    spec = _spec()
    billing = tasks.Billing(Prices.of(LIST_PRICES), tz)
    one = billing.prices.unit(spec) * ledger.held_seconds(spec)
    accounts.create(db, "poor", credit=3 * one, tz=tz)
    accounts.create(db, "rich", credit=100 * one, tz=tz)
    lock = _lock(db)

    async def burst() -> list[Any]:
        owners = ["poor", "rich"] * 5
        return await asyncio.gather(*(
            tasks.submit(db, spec, Principal(f"key-{o}", o), retention_ms=DAY_MS, write_lock=lock, billing=billing,
                         max_unfinished=1000) for o in owners), return_exceptions=True)

    answers = _run(db, burst())
    poor, rich = answers[0::2], answers[1::2]
    assert sum(isinstance(a, Arrearage) for a in poor) == 2 and not any(isinstance(a, BaseException) for a in rich)
    assert _count(db) == 8
    assert accounts.show(db, "poor", tz=tz).balance == 0
    assert accounts.show(db, "rich", tz=tz).balance == 95 * one
    assert not accounts.audit(db)  # every balance is the sum of its entries

    sizes: list[int] = []
    real = transitions.create_many
    monkeypatch.setattr(transitions, "create_many",
                        lambda conn, new, **o: sizes.append(len(new)) or real(conn, new, **o))

    async def rich_burst() -> list[Any]:
        return await asyncio.gather(*(
            tasks.submit(db, spec, Principal("key-rich", "rich"), retention_ms=DAY_MS, write_lock=lock,
                         billing=billing, max_unfinished=1000) for _ in range(6)))

    assert len(_run(db, rich_burst())) == 6
    assert sizes == [6]  # one batch: six inserts and six holds in one transaction
    assert accounts.show(db, "rich", tz=tz).balance == 89 * one and not accounts.audit(db)
