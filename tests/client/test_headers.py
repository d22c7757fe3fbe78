"""Retry-After as the client and the relay read it: seconds or an HTTP date, never an error."""

from __future__ import annotations

from datetime import datetime, timedelta, UTC
from email.utils import format_datetime

import httpx
import pytest

from ref2video.client import retry_after


def answer(**headers: str) -> httpx.Response:
    return httpx.Response(429, headers=headers)


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), ("0.5", 0.5), (" 7 ", 7.0), ("-4", 0.0)])
def test_seconds(value: str, seconds: float) -> None:
    assert retry_after(answer(**{"Retry-After": value})) == seconds


def test_an_http_date_counts_from_now() -> None:
    when = datetime.now(UTC) + timedelta(minutes=2)
    seconds = retry_after(answer(**{"Retry-After": format_datetime(when, usegmt=True)}))
    assert seconds is not None and 100 < seconds <= 120
    past = format_datetime(datetime(2001, 1, 1, tzinfo=UTC), usegmt=True)
    assert retry_after(answer(**{"Retry-After": past})) == 0.0


@pytest.mark.parametrize("value", ["", "soon", "Mon, 99 Foo 2026"])
def test_absent_or_unreadable_is_none(value: str) -> None:
    assert retry_after(answer(**{"Retry-After": value})) is None
    assert retry_after(answer()) is None
