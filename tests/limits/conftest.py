"""Servers with limits on, and a clock the test moves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.live import LiveServer


class FakeClock:
    """Epoch seconds that move only when told (the buckets' clock)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limited(make_server: Callable[..., LiveServer], clock: FakeClock) -> Callable[..., LiveServer]:
    """`limited(**settings)`: a server (no workers: tasks stay PENDING) whose buckets run on
    `clock`, made before any request so every bucket takes it."""

    def make(**settings: Any) -> LiveServer:
        server = make_server(**{"workers": 0, **settings})
        server.service.limits.clock = clock
        return server

    return make


def assert_throttled(r: httpx.Response, *, limit: int, retry_after: int | None = None, words: str = "") -> None:
    """A 429 in the provider's envelope with Retry-After and the RateLimit-* headers."""
    assert r.status_code == 429, r.text
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == "Throttling.RateQuota", body
    assert body["message"].startswith("Requests rate limit exceeded, please try again later."), body
    assert words in body["message"], body
    after = int(r.headers["retry-after"])
    assert after >= 1 and (retry_after is None or after == retry_after), r.headers
    assert r.headers["ratelimit-limit"] == str(limit), r.headers
    assert r.headers["ratelimit-remaining"] == "0", r.headers
    assert int(r.headers["ratelimit-reset"]) == after, r.headers
