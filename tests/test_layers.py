"""The layers hold: only `app/transitions.py` changes a task's state, and store functions never
open transactions. Read from the source, so every path counts, not only those a test runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests import status_guard

SRC = Path(__file__).resolve().parents[1] / "src" / "ref2video"
TRANSITIONS = SRC / "app" / "transitions.py"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


_VERBS = ("insert", "update", "delete")


def _task_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each statement in `tree` that inserts or deletes tasks, or updates a
    task's `status` (or passes values it cannot see: `**values`, a dict, values given later or
    as execute parameters), and each SQL string that does."""
    verbs = _verb_names(tree)
    found = []
    for node in ast.walk(tree):
        sql = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
        if sql and status_guard.sets_task_status(sql):
            found.append((node.lineno, "SQL that writes a task's status"))
        if not isinstance(node, ast.Call):
            continue
        verb = _task_verb(node, verbs)
        if verb is None:
            continue
        if verb != "update":
            found.append((node.lineno, f"{verb}(Task)"))
            continue
        chained = _chained_calls(tree, node)
        if not chained:
            found.append((node.lineno, "update(Task) whose values are set elsewhere"))
        for call in chained:
            names = {k.arg for k in call.keywords}
            if "status" in names:
                found.append((node.lineno, "update(Task) of status"))
            elif None in names or call.args:  # values it cannot see: **values, or a dict
                found.append((node.lineno, "update(Task) of values not named here"))
        if _executed_with_parameters(tree, node):
            found.append((node.lineno, "update(Task) with execute parameters"))
    return found


def _verb_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> statement verb: the plain names, the dialects' inserts, and any alias an
    import gives them (`from sqlalchemy import update as change`)."""
    names = {verb: verb for verb in _VERBS} | {"pg_insert": "insert", "sqlite_insert": "insert"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            for alias in node.names:
                if alias.name in _VERBS:
                    names[alias.asname or alias.name] = alias.name
    return names


def _task_verb(call: ast.Call, verbs: dict[str, str]) -> str | None:
    """The verb of a statement on tasks that `call` builds: `update(Task)`, `sa.update(Task)`,
    `change(Task)` (an alias), `Task.__table__.update()`; else None."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in _VERBS and _names_task(func.value, table_only=True):
        return func.attr
    if isinstance(func, ast.Name):
        verb = verbs.get(func.id)
    elif isinstance(func, ast.Attribute) and func.attr in _VERBS:
        verb = func.attr  # sa.update, sqlalchemy.update, postgresql.insert
    else:
        return None
    return verb if verb is not None and call.args and _names_task(call.args[0]) else None


def _names_task(node: ast.AST, *, table_only: bool = False) -> bool:
    """`Task`, or `Task.__table__` (only that when `table_only`)."""
    if isinstance(node, ast.Attribute) and node.attr == "__table__":
        node = node.value
    elif table_only:
        return False
    return isinstance(node, ast.Name) and node.id == "Task"


def _chained_calls(tree: ast.AST, root: ast.Call) -> list[ast.Call]:
    """The `.values(...)` calls chained on `root` (update(Task).where(...).values(...))."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            inner: ast.AST = node.func.value
            while inner is not root and isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                inner = inner.func.value
            if inner is root:
                calls.append(node)
    return calls


def _executed_with_parameters(tree: ast.AST, root: ast.Call) -> bool:
    """Whether `root` is executed with parameters (`conn.execute(update(Task)..., {...})`),
    which may set more columns than its `.values()` names."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "execute"
                and len(node.args) > 1 and any(n is root for n in ast.walk(node.args[0]))):
            return True
    return False


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
        # Spellings the scan once missed:
        "sa.update(Task).values(status='FAILED')",
        "Task.__table__.update().values(status='FAILED')",
        "conn.execute(update(Task).where(x), {'status': 'FAILED'})",
        "s = update(Task)\ns = s.values(status='FAILED')",
        "conn.exec_driver_sql(\"UPDATE tasks SET status = 'FAILED' WHERE id = ?\")",
        "conn.execute(text('INSERT INTO tasks (id, status) VALUES (:i, :s)'))",
        "from sqlalchemy import update as change\nchange(Task).values(status='FAILED')",
    ):
        assert _task_writes(ast.parse(source)), source
    for harmless in (
        "update(Task).where(x).values(upstream_status='RUNNING')",
        "Task.__table__.update().where(x).values(usage=u)",
        "conn.exec_driver_sql('UPDATE tasks SET progress = 1 WHERE tasks.status = 2')",
        "conn.exec_driver_sql('SELECT status FROM tasks')",
    ):
        assert not _task_writes(ast.parse(harmless)), harmless


def test_the_runtime_guard_catches_a_raw_status_write(tmp_path: Path, status_writes: list[str]) -> None:
    """tests/status_guard.py, which every test runs under, sees the statements themselves: a
    raw `UPDATE tasks SET status` made outside app/transitions.py is caught, and the same
    write through a transition is not."""
    from sqlalchemy import update

    from ref2video.app import transitions
    from ref2video.spec import TaskSpec
    from ref2video.store.db import make_engine, migrate
    from ref2video.store.keys import Principal
    from ref2video.store.models import Task

    db = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        migrate(db)
        spec = TaskSpec(model="m", prompt="p", reference_urls=("https://x.test/a.png",))
        with db.begin() as conn:
            task = transitions.create(conn, spec, Principal(key_id="k", owner="o"))
            transitions.cancel(conn, "o", task.id)
        assert status_writes == []
        with db.begin() as conn:
            conn.exec_driver_sql("UPDATE tasks SET status = 'FAILED' WHERE id = ?", (task.id,))
            conn.execute(update(Task).where(Task.id == task.id), {"status": "PENDING"})
            conn.exec_driver_sql("UPDATE tasks SET progress = 1 WHERE tasks.status = 'PENDING'")  # not a write of it
        caught, status_writes[:] = list(status_writes), []
    finally:
        db.dispose()
    assert len(caught) == 2, caught
    assert all("test_layers.py" in line and "test_the_runtime_guard" in line for line in caught), caught
    assert "SET status = 'FAILED'" in caught[0]


_OPENS = ("begin", "connect", "begin_nested", "raw_connection", "commit", "rollback")
# Transaction control as SQL, in capitals as this code writes SQL (a word such as "release"
# elsewhere is no statement).
_TRANSACTION_SQL = re.compile(r"\s*(?:(?:BEGIN|COMMIT|ROLLBACK|END)\b|START\s+TRANSACTION|SAVEPOINT\s"
                              r"|RELEASE\s+SAVEPOINT)")


def _transactions_opened(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each place in `tree` that opens, ends or goes around a transaction:
    `.begin()`, `.connect()`, `.commit()`, `.raw_connection()` and the like, and SQL that
    does it (`exec_driver_sql("BEGIN")`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _OPENS:
            found.append((node.lineno, f".{node.func.attr}()"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _TRANSACTION_SQL.match(node.value):
            found.append((node.lineno, repr(node.value[:20])))
    return found


def test_store_functions_never_open_transactions() -> None:
    opened = []
    for path in sorted((SRC / "store").glob("*.py")):
        if path.name == "db.py":  # the engine itself, and migrations, which run in one transaction
            continue
        opened += [f"{path.name}:{line} {what}" for line, what in _transactions_opened(ast.parse(path.read_text()))]
    assert not opened, opened


def test_the_store_scan_sees_a_transaction() -> None:
    for source in ("db.begin()", "engine.connect()", "conn.begin_nested()", "conn.commit()",
                   "engine.raw_connection()", "conn.exec_driver_sql('BEGIN')", "conn.execute(text('COMMIT'))"):
        assert _transactions_opened(ast.parse(source)), source
    assert not _transactions_opened(ast.parse("conn.execute(text('SELECT 1'))"))
