"""A runtime check that only app/transitions.py writes a task's state.

tests/test_layers.py reads the source for such writes; this sees the statements themselves as
they reach the database, however they were spelled (`update(Task)`, `Task.__table__.update()`,
values given as execute parameters, raw SQL): every INSERT into `tasks`, and every UPDATE of
`tasks` that sets `status`, must have app/transitions.py on its Python stack. tests/conftest.py
installs it for the whole suite and fails a test in which one happened.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from ref2video.app import transitions

# Cheap first: most statements fail this at their first word.
_WRITES_TASKS = re.compile(r'\s*(?:INSERT\s+INTO|UPDATE)\s+"?tasks"?[\s(]', re.IGNORECASE)
# An UPDATE's unqualified `status =` (SQLAlchemy qualifies a WHERE clause's: `tasks.status`),
# or `status` among an INSERT's columns.
_SETS_STATUS = re.compile(r'^\s*UPDATE\b.*?(?<![.\w"])"?status"?\s*='
                          r'|^\s*INSERT\b[^(]*\([^)]*(?<![.\w])"?status\b', re.IGNORECASE | re.DOTALL)

_TRANSITIONS = transitions.__file__
_MIGRATIONS = str(Path(_TRANSITIONS).parents[1] / "store" / "migrations") + os.sep  # alembic's, if one ever does
_TESTS = Path(__file__).resolve().parent
# Tests that write a status themselves, on purpose: (file under tests/, function).
ALLOWED = {
    ("queue/test_manager.py", "test_cancel_requests_reach_the_heartbeat"),  # an UPDATE that must change nothing
}
_ALLOWED_CODE = {(str(_TESTS / path), name) for path, name in ALLOWED}

_violations: list[str] = []
_lock = threading.Lock()


def sets_task_status(statement: str) -> bool:
    """Whether `statement` inserts a task or sets a task's status."""
    return _WRITES_TASKS.match(statement) is not None and _SETS_STATUS.search(statement) is not None


def _check(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if not sets_task_status(statement):
        return
    frame = sys._getframe(1)
    caller = None
    while frame is not None:
        code = frame.f_code
        if (code.co_filename == _TRANSITIONS or code.co_filename.startswith(_MIGRATIONS)
                or (code.co_filename, code.co_name) in _ALLOWED_CODE):
            return
        if caller is None and "sqlalchemy" not in code.co_filename and code.co_filename != __file__:
            caller = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    with _lock:
        _violations.append(f"{caller}: {' '.join(statement.split())[:200]}")


def install() -> None:
    if not event.contains(Engine, "before_cursor_execute", _check):
        event.listen(Engine, "before_cursor_execute", _check)


def watch() -> Iterator[list[str]]:
    """For a fixture: the violations seen while the test ran (a list it may empty); fails the
    test at teardown if any are left."""
    install()
    with _lock:
        _violations.clear()
    yield _violations
    with _lock:
        found, _violations[:] = list(_violations), []
    if found:
        pytest.fail("a task's status was written outside app/transitions.py:\n" + "\n".join(found), pytrace=False)
