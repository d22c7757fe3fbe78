"""What people see on a terminal (a pseudo-terminal of a chosen width) as against a pipe."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.cli.procs import run_in_terminal
from tests.live import LiveServer


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these commands see the server through HTTP, never its database."""
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


def test_list_in_a_narrow_terminal_never_cuts_an_id(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(workers=0)
    ids = [server.create() for _ in range(3)]
    code, shown = run_in_terminal(["list", "--server", server.url, "--key", server.key], tmp_path, columns=60,
                                  COLUMNS="60")
    assert code == 0, shown
    assert "3 task(s)" in shown and "PENDING" in shown
    for task_id in ids:
        assert task_id in shown, shown
    assert "\t" not in shown  # a table for people, not the pipe's lines


def test_status_in_a_terminal_is_for_people_and_keeps_the_url_whole(server: LiveServer, tmp_path: Path) -> None:
    task_id = server.create(prompt="character1 waves steps=2")
    server.wait(task_id)
    code, shown = run_in_terminal(["status", task_id[:8], "--server", server.url, "--key", server.key], tmp_path,
                                  columns=60, COLUMNS="60")
    assert code == 0, shown
    assert f"{task_id}  SUCCEEDED" in shown and "task_id:" not in shown
    (url,) = re.findall(r"^http://\S+$", shown, re.M)
    # one line however narrow the terminal
    assert len(url) > 60 and url.startswith(server.results_url) and httpx.get(url).status_code == 200
