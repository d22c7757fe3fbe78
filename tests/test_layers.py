"""The layers hold: only `app/transitions.py` changes a task's state, and store functions never
open transactions. Read from the source, so every path counts, not only those a test runs."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ref2video"
TRANSITIONS = SRC / "app" / "transitions.py"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _task_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each statement in `tree` that inserts or deletes tasks, or updates a
    task's `status` (or passes values it cannot see, `**values`)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        target = node.args[0]
        if node.func.id not in ("insert", "update", "delete", "pg_insert", "sqlite_insert"):
            continue
        if not _names_task(target):
            continue
        if node.func.id != "update":
            found.append((node.lineno, f"{node.func.id}(Task)"))
            continue
        for call in _chained_calls(tree, node):
            names = {k.arg for k in call.keywords}
            if "status" in names:
                found.append((node.lineno, "update(Task) of status"))
            elif None in names or call.args:  # values it cannot see: **values, or a dict
                found.append((node.lineno, "update(Task) of values not named here"))
    return found


def _names_task(node: ast.AST) -> bool:
    """`Task`, or `Task.__table__`."""
    if isinstance(node, ast.Attribute) and node.attr == "__table__":
        node = node.value
    return isinstance(node, ast.Name) and node.id == "Task"


def _chained_calls(tree: ast.AST, root: ast.Call) -> list[ast.Call]:
    """The `.values(...)` calls chained on `root` (update(Task).where(...).values(...))."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            inner: ast.AST = node.func.value
            while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                inner = inner.func.value
            if inner is root:
                calls.append(node)
    return calls


def test_only_the_transitions_module_writes_a_tasks_state() -> None:
    writers = {}
    for path in _modules():
        writes = _task_writes(ast.parse(path.read_text(), str(path)))
        if writes:
            writers[str(path.relative_to(SRC))] = writes
    assert set(writers) == {"app/transitions.py"}, writers


def test_the_scan_sees_a_status_write() -> None:
    """The check above can fail: a module that sets a status is caught, however it is spelled."""
    for source in (
        "update(Task).where(x).values(status='FAILED')",
        "update(Task).values(**moved)",
        "update(Task).values(moved)",
        "insert(Task).values(id='x')",
        "delete(Task).where(x)",
        "insert(Task.__table__)",
    ):
        assert _task_writes(ast.parse(source)), source
    assert not _task_writes(ast.parse("update(Task).where(x).values(upstream_status='RUNNING')"))


def test_store_functions_never_open_transactions() -> None:
    opened = []
    for path in sorted((SRC / "store").glob("*.py")):
        if path.name == "db.py":  # the engine itself, and migrations, which run in one transaction
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("begin", "connect", "begin_nested")):
                opened.append(f"{path.name}:{node.lineno} .{node.func.attr}()")
    assert not opened, opened
