"""Shared fixtures: databases (SQLite, and PostgreSQL where there is one), and real servers on
loopback running the real app with the scripted test engine."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import status_guard
from tests.live import LiveServer, settings_for, start_server

PG_URL = os.environ.get("REF2VIDEO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The PostgreSQL server's URL; skipped on a laptop without one, a failure in CI."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {PG_URL}")
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    return PG_URL


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    import psycopg

    name = f"r2v_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_server(tmp_path: Path, database_url: str) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with test settings (overridable); all stopped at the end of the test."""
    servers: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(servers)}")
        # A Storage object is a part; the string `storage="s3"` is the setting.
        parts = {name: overrides.pop(name) for name in ("storage", "uploads", "registry")
                 if name in overrides and not isinstance(overrides[name], str)}
        server = start_server(settings_for(data_dir, database_url, **overrides), **parts)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


@pytest.fixture(autouse=True)
def status_writes() -> Iterator[list[str]]:
    """The writes of a task's status made outside app/transitions.py during a test
    (tests/status_guard.py); any fails the test. The guard's own test takes it to look."""
    yield from status_guard.watch()
