"""Fixtures of the webhook tests: a verifying receiver, and helpers to read the outbox."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ref2video.store.models import OutboxMessage

from .receiver import Receiver

# Fast webhook settings for tests: look often, retry soon.
FAST: dict[str, Any] = dict(webhook_poll_interval=0.05, webhook_backoff_seconds=0.05,
                            webhook_backoff_max_seconds=0.2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


def outbox(db: Engine) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `condition` until it returns something true; the timeout only keeps a broken test
    from hanging."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return value


def all_delivered(db: Engine, count: int) -> Callable[[], bool]:
    def check() -> bool:
        rows = outbox(db)
        return len(rows) == count and all(r.delivered_at is not None for r in rows)
    return check
