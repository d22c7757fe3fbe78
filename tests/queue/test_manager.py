"""The queue's statements on real SQLite and PostgreSQL: claim, lease, reap, compare-and-set."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, update

from ref2video.protocol import Status
from ref2video.queue.manager import Claim, LeaseLost, QueueManager
from ref2video.spec import TaskSpec
from ref2video.app import tasks
from ref2video.store.db import make_engine, migrate
from ref2video.store.keys import Principal
from ref2video.store.models import Task

MODELS = ["m"]
OWNER = Principal(key_id="k", owner="o")
DAY = 86_400_000


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def add(db: Engine, n: int = 1) -> list[str]:
    spec = TaskSpec(model="m", prompt="p", reference_urls=("https://x.test/a.png",))
    return [tasks.create(db, spec, OWNER, retention_ms=DAY).id for _ in range(n)]


def status(db: Engine, task_id: str) -> tuple:
    with db.connect() as conn:
        return tuple(conn.execute(select(Task.status, Task.attempt, Task.error_code).where(Task.id == task_id)).one())


def test_claims_take_the_oldest_first_and_only_served_models(db: Engine) -> None:
    first, second = add(db, 2)
    manager = QueueManager(db)
    assert manager.claim(["other"]) is None
    claim = manager.claim(MODELS)
    assert claim is not None and claim.task.id == first and claim.task.attempt == 1
    assert claim.task.status is Status.RUNNING and claim.task.scheduled_at is not None
    assert manager.claim(MODELS).task.id == second  # type: ignore[union-attr]
    assert manager.claim(MODELS) is None


def test_concurrent_claimers_never_share_a_task(db: Engine) -> None:
    ids = set(add(db, 40))
    manager = QueueManager(db)
    got: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (claim := manager.claim(MODELS)) is not None:
            with lock:
                got.append(claim.task.id)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def test_finishing_is_a_compare_and_set_on_the_lease(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db)
    claim = manager.claim(MODELS)
    assert claim is not None
    assert manager.succeed(claim, result_key="k.mp4", usage={"duration": 5}, engine="e")
    assert not manager.succeed(claim, result_key="k.mp4", usage={}, engine="e")  # never twice
    assert not manager.fail(claim, "X", "late")
    assert status(db, task_id) == ("SUCCEEDED", 1, None)


def test_a_lapsed_lease_is_requeued_with_attempt_plus_one_and_the_old_claim_is_dead(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db, lease_seconds=0.05, max_attempts=3)
    stale = manager.claim(MODELS)
    assert stale is not None
    time.sleep(0.1)
    assert manager.reap() == (1, 0)
    assert status(db, task_id) == ("PENDING", 1, None)
    fresh = manager.claim(MODELS)
    assert fresh is not None and fresh.task.attempt == 2
    with pytest.raises(LeaseLost):
        manager.heartbeat(stale)
    assert not manager.succeed(stale, result_key="x", usage={}, engine="e")
    assert manager.heartbeat(fresh, progress=50) is False


def test_past_the_attempt_limit_the_reaper_fails_the_task(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db, lease_seconds=0.02, max_attempts=2)
    for _ in range(2):
        assert manager.claim(MODELS) is not None
        time.sleep(0.05)
        manager.reap()
    code = status(db, task_id)
    assert code == ("FAILED", 2, "InternalError")


def test_heartbeats_renew_the_lease(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db, lease_seconds=0.3)
    claim = manager.claim(MODELS)
    assert claim is not None
    for _ in range(4):
        time.sleep(0.1)
        manager.heartbeat(claim, progress=10)
        assert manager.reap() == (0, 0)
    assert status(db, task_id)[0] == "RUNNING"


def test_retry_respects_its_delay(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db)
    claim = manager.claim(MODELS)
    assert claim is not None
    assert manager.retry(claim, "Throttling", "busy", delay=0.3) is Status.PENDING
    assert manager.claim(MODELS) is None  # not before run_after
    due = manager.next_due(MODELS)  # what an idle worker waits for, at most
    assert due is not None and 0 < due <= 0.3
    assert manager.next_due(["another-model"]) is None and manager.next_due([]) is None
    time.sleep(0.35)
    again = manager.claim(MODELS)
    assert again is not None and again.task.id == task_id and again.task.attempt == 2


def test_release_hands_back_without_spending_an_attempt(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db)
    claim = manager.claim(MODELS)
    assert claim is not None and manager.release(claim)
    assert status(db, task_id) == ("PENDING", 0, None)


def test_cancel_requests_reach_the_heartbeat(db: Engine) -> None:
    (task_id,) = add(db)
    manager = QueueManager(db)
    claim = manager.claim(MODELS)
    assert claim is not None
    assert tasks.cancel(db, OWNER, task_id) is Status.RUNNING
    assert manager.heartbeat(claim) is True and manager.cancel_requested(claim) is True
    assert manager.mark_canceled(claim)
    assert status(db, task_id)[0] == "CANCELED"
    with db.begin() as conn:  # nothing changes a terminal row
        conn.execute(update(Task).where(Task.id == task_id, Task.status == "PENDING").values(status="RUNNING"))
    assert tasks.cancel(db, OWNER, task_id) is None


def _claimed_then_canceled(db: Engine) -> tuple[str, QueueManager, Claim]:
    """A task claimed by a worker whose cancel was then accepted (a 200 with the task RUNNING)."""
    (task_id,) = add(db)
    manager = QueueManager(db, max_attempts=3)
    claim = manager.claim(MODELS)
    assert claim is not None
    assert tasks.cancel(db, OWNER, task_id) is Status.RUNNING
    return task_id, manager, claim


def test_a_retryable_error_after_an_accepted_cancel_ends_canceled(db: Engine) -> None:
    """A 200 to a cancel is a promise (docs/protocol.md §6): the retry gives the task up, not back."""
    task_id, manager, claim = _claimed_then_canceled(db)
    assert manager.retry(claim, "Throttling", "busy") is Status.CANCELED
    assert status(db, task_id) == ("CANCELED", 1, None)
    assert manager.claim(MODELS) is None


def test_a_lapsed_lease_with_an_accepted_cancel_ends_canceled_at_the_reaper(db: Engine) -> None:
    task_id, manager, stale = _claimed_then_canceled(db)
    with db.begin() as conn:  # the holder stopped answering: its lease is past
        conn.execute(update(Task).where(Task.id == task_id).values(lease_expires_at=0))
    assert manager.reap() == (0, 0)
    assert status(db, task_id) == ("CANCELED", 1, None)
    assert manager.claim(MODELS) is None
    assert not manager.succeed(stale, result_key="x", usage={}, engine="e")


def test_bulk_requeues_are_counted_and_logged(db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A reaped lease and a process handing back all it held are moves back to PENDING too:
    the transition counter and the per-transition log show them, as they show a single retry."""
    from prometheus_client import REGISTRY

    from ref2video.queue.journal import TableJournal
    from ref2video.queue.wakeup import Wakeup

    def pending_moves() -> float:
        return REGISTRY.get_sample_value("ref2video_task_transitions_total", {"to": "PENDING"}) or 0.0

    reaped, released = add(db, 2)
    caplog.set_level("INFO", "ref2video.tasks")
    manager = QueueManager(db, lease_seconds=0.05, max_attempts=3)
    assert manager.claim(MODELS) is not None
    while True:  # the lease lapses
        with db.connect() as conn:
            if conn.execute(select(Task.lease_expires_at).where(Task.id == reaped)).scalar_one() < time.time() * 1000:
                break
        time.sleep(0.02)
    before = pending_moves()
    assert manager.reap() == (1, 0)
    assert pending_moves() == before + 1
    journal = TableJournal(QueueManager(db), Wakeup(db), "relay")
    assert journal.claim(MODELS) is not None  # (the reaped task, first again)
    assert journal.claim(MODELS) is not None
    assert journal.release_all() == 2
    assert pending_moves() == before + 3
    lines = [r.getMessage() for r in caplog.records if r.name == "ref2video.tasks"]
    assert sum(f"task {reaped} moved RUNNING -> PENDING" in line for line in lines) == 2
    assert sum(f"task {released} moved RUNNING -> PENDING" in line for line in lines) == 1
