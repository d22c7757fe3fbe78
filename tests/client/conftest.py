"""Client tests run against the real app on loopback (tests/conftest.py's `server` / `make_server`).

The client never sees the database, so these tests run on SQLite only (overriding the
SQLite-and-PostgreSQL `database_url` of tests/conftest.py) to stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from PIL import Image

from ref2video.client import Client, _base, _client
from tests.client.flaky import FlakyServer
from tests.live import LiveServer

QUICK = "character1 waves steps=2 step_ms=10"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, server.key, backoff=0.05) as c:
        yield c


def record_sleeps(patch: pytest.MonkeyPatch) -> list[float]:
    """Make the clients' time pass only when they sleep: each sleep (a wait's pause, a retry's
    delay) is recorded rather than slept, and their clock is the sum of those so far."""
    asked: list[float] = []

    async def asleep(delay: float) -> None:
        asked.append(delay)

    patch.setattr(_client, "_sleep", asked.append)
    patch.setattr(_client, "_async_sleep", asleep)
    patch.setattr(_base, "_clock", lambda: sum(asked))
    return asked


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the clients asked to sleep, in order (see `record_sleeps`)."""
    return record_sleeps(monkeypatch)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    return make_png(tmp_path / "hero.png")


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    yield server
    server.close()


def make_png(path: Path, size: tuple[int, int] = (320, 240), colour: tuple[int, int, int] = (10, 120, 200)) -> Path:
    Image.new("RGB", size, colour).save(path, "PNG")
    return path


def assert_mp4(path: Path, size: tuple[int, int] | None = None) -> None:
    """The file is an MP4 that PyAV opens, with a video stream whose first frame decodes."""
    assert path.read_bytes()[4:8] == b"ftyp"
    with av.open(str(path)) as container:
        assert container.format.name.startswith("mov,mp4")
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        if size is not None:
            assert (frame.width, frame.height) == size
    assert not list(path.parent.glob(".*.part")), "the temporary download was left behind"
