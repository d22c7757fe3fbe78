"""Relay tests: a real ref2video server on loopback plays the provider (it speaks the provider's
protocol), and `FaultServer` plays a provider that misbehaves.

The provider client never sees the database, so these run on SQLite only (overriding the
SQLite-and-PostgreSQL `database_url` of tests/conftest.py) to stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.relay.faults import FaultServer


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


def assert_mp4(path: Path) -> None:
    """An MP4 that PyAV opens, whose first video frame decodes."""
    assert path.read_bytes()[4:8] == b"ftyp"
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        assert frame.width > 0 and frame.height > 0
