"""SIGKILL the API and the workers at random points of 120 billed tasks' lives; afterwards every
owner's balance is exactly its credit less the list price of its tasks that SUCCEEDED, every
hold was released once, and every balance is the sum of its ledger."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from ref2video.app import accounts
from ref2video.app import keys as key_admin
from ref2video.app.ledger import to_micro
from ref2video.store.db import make_engine, migrate
from ref2video.store.models import Account, LedgerEntry, Task
from tests.live import free_port, make_body

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow

OWNERS = ("acme", "globex", "initech")
CREDIT = Decimal("1000")
TASKS = 120
PRICE = Decimal("0.3")  # wan2.6-r2v-flash, 720P, with sound: every task below is one of those


def test_random_sigkills_leave_the_books_exact(tmp_path: Path, database_url: str) -> None:
    rng = random.Random(20261201)
    db = make_engine(database_url)
    migrate(db)
    tz = ZoneInfo("Asia/Shanghai")
    keys = {}
    for owner in OWNERS:
        accounts.create(db, owner, credit=to_micro(CREDIT), tz=tz)
        keys[owner] = key_admin.create_key(db, owner=owner)[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = dict(billing="true", lease_seconds=1.0, reap_interval=0.2, poll_interval=1, shutdown_grace=0)
    api_env = env_for(tmp_path / "api", database_url, port=port, workers=0, **common)
    worker_env = env_for(tmp_path / "worker", database_url, workers=2, **common)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> None:
        args, env = (["serve"], api_env) if name == "api" else (["worker"], worker_env)
        procs[name] = spawn(args, env, logs / f"{name}.log")
        if name == "api":
            wait_healthy(url, procs[name])

    for name in ("api", "worker1", "worker2"):
        start(name)
    created: list[str] = []
    kills = collections.Counter[str]()
    clients = {owner: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
               for owner, key in keys.items()}
    try:
        last_kill = time.monotonic()
        deadline = time.monotonic() + 240
        while len(created) < TASKS or sum(kills.values()) < 12 or not _all_ended(db):
            assert time.monotonic() < deadline, (len(created), kills)
            if len(created) < TASKS:
                owner = rng.choice(OWNERS)
                kind = rng.random()
                prompt = ("character1 waves fail=Boom" if kind < 0.15 else
                          f"character1 waves steps={rng.randint(2, 10)} step_ms={rng.randint(50, 150)}")
                try:
                    body = make_body(prompt, duration=rng.choice([5, 10]))
                    r = clients[owner].post("/task/bailian/ref2video", json=body)
                    if r.status_code == 200:
                        task_id = r.json()["output"]["task_id"]
                        created.append(task_id)
                        if kind > 0.9:  # cancel some, PENDING or RUNNING
                            clients[owner].post(f"/api/v1/tasks/{task_id}/cancel")
                except httpx.TransportError:
                    pass  # the API was killed under us: a create may or may not have been made
            if time.monotonic() - last_kill > rng.uniform(0.2, 0.6) and not (len(created) >= TASKS and _all_ended(db)):
                name = rng.choice(list(procs))
                stop(procs[name], signal.SIGKILL)
                kills[name] += 1
                start(name)
                last_kill = time.monotonic()
            time.sleep(0.04)
    finally:
        for client in clients.values():
            client.close()
        for proc in procs.values():
            stop(proc)
    assert sum(kills.values()) >= 12 and kills["api"] and kills["worker1"] + kills["worker2"], kills

    with db.connect() as conn:
        tasks = conn.execute(select(Task.id, Task.owner, Task.status, Task.usage)).all()
        ledger = conn.execute(select(LedgerEntry.task_id, LedgerEntry.kind, LedgerEntry.amount)).all()
        balances = dict(conn.execute(select(Account.owner, Account.balance)).all())
    db.dispose()
    assert len(tasks) >= TASKS and {t.status for t in tasks} <= {"SUCCEEDED", "FAILED", "CANCELED"}
    by_task = collections.defaultdict(dict)
    for entry in ledger:
        if entry.task_id:
            by_task[entry.task_id][entry.kind] = entry.amount
    expected = {owner: to_micro(CREDIT) for owner in OWNERS}
    for task in tasks:
        money = by_task[task.id]
        assert money["hold"] == -money["release"], (task, money)  # held once, released once
        if task.status == "SUCCEEDED":
            cost = to_micro(PRICE * task.usage["duration"])
            assert money["charge"] == -cost and Decimal(task.usage["cost"]) == PRICE * task.usage["duration"]
            expected[task.owner] -= cost
        else:
            assert "charge" not in money, (task, money)
    assert balances == expected
    assert not accounts.audit(make_engine(database_url))


def _all_ended(db: object) -> bool:
    from sqlalchemy import Engine, func

    assert isinstance(db, Engine)
    with db.connect() as conn:
        open_tasks = conn.execute(
            select(func.count()).select_from(Task).where(Task.status.in_(["PENDING", "RUNNING"]))
        ).scalar_one()
    return bool(open_tasks == 0)
