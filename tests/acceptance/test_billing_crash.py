"""SIGKILL the API, two workers and the relay at random points of 120 billed tasks' lives;
afterwards every owner's balance is exactly its credit less the price of its tasks that
SUCCEEDED, every hold was released once, and every balance is the sum of its ledger.

Two in five tasks go to a model the relay serves (a `ref2video worker` on the `dashscope`
engine, in front of a provider of our own on loopback that is never killed): those are charged
for the usage the provider reported, reference-video seconds included."""

from __future__ import annotations

import collections
import itertools
import json
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import Engine, func, select

from ref2video.app import accounts
from ref2video.app import keys as key_admin
from ref2video.app.ledger import to_micro
from ref2video.store.db import make_engine, migrate
from ref2video.store.models import Account, LedgerEntry, Task
from tests.live import free_port, make_body, ref_url
from tests.relay.relays import RELAYED, provider_tasks, start_provider

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow

OWNERS = ("acme", "globex", "initech")
CREDIT = Decimal("1000")
TASKS = 120
LOCAL, RELAY = "wan2.6-r2v-flash", "wan2.6-r2v"  # run by the two workers; by the relay
PRICE = {LOCAL: Decimal("0.3"), RELAY: Decimal("0.6")}  # per second at 720P (the flash model with sound)


def test_random_sigkills_leave_the_books_exact(tmp_path: Path, database_url: str) -> None:
    rng = random.Random(20261201)
    db = make_engine(database_url)
    migrate(db)
    tz = ZoneInfo("Asia/Shanghai")
    keys = {}
    for owner in OWNERS:
        accounts.create(db, owner, credit=to_micro(CREDIT), tz=tz)
        keys[owner] = key_admin.create_key(db, owner=owner)[0]
    provider = start_provider(tmp_path, workers=4)  # someone else's: it keeps running throughout
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = dict(billing="true", lease_seconds=1.0, reap_interval=0.2, poll_interval=1, shutdown_grace=0)
    worker = (["worker"], env_for(tmp_path / "worker", database_url, workers=2, worker_models=LOCAL, **common))
    commands = {
        "api": (["serve"], env_for(tmp_path / "api", database_url, port=port, workers=0, **common)),
        "worker1": worker, "worker2": worker,
        "relay": (["worker"], env_for(
            tmp_path / "relay", database_url, workers=1, worker_models=RELAY, models=json.dumps(RELAYED),
            dashscope_base_url=f"{provider.url}/api/v1", dashscope_api_keys=json.dumps([provider.key]),
            dashscope_timeout=3, dashscope_query_rate=50, dashscope_submit_rate=50, **common)),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> None:
        args, env = commands[name]
        procs[name] = spawn(args, env, logs / f"{name}.log")
        if name == "api":
            wait_healthy(url, procs[name])

    for name in commands:
        start(name)
    created: list[str] = []
    kills = collections.Counter[str]()
    numbers = itertools.count()  # in every prompt: the relay tells a lost submit's task by its prompt
    clients = {owner: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
               for owner, key in keys.items()}
    try:
        last_kill = time.monotonic()
        deadline = time.monotonic() + 240
        while not (len(created) >= TASKS and _all_ended(db) and _enough(kills)):
            assert time.monotonic() < deadline, (len(created), kills, _open_tasks(db))
            if len(created) < TASKS:
                owner = rng.choice(OWNERS)
                model = RELAY if len(created) % 5 < 2 else LOCAL
                kind = rng.random()
                prompt = (f"character1 waves {next(numbers)} fail=Boom" if kind < 0.15 else
                          f"character1 waves {next(numbers)} steps={rng.randint(2, 10)} step_ms={rng.randint(50, 150)}")
                # Some relayed tasks use a 2 s reference video: the provider bills it, we held 5 s for it.
                urls = [ref_url("c.mp4")] if model == RELAY and rng.random() < 0.5 else None
                try:
                    body = make_body(prompt, urls=urls, model=model, duration=rng.choice([5, 10]))
                    r = clients[owner].post("/task/bailian/ref2video", json=body)
                    if r.status_code == 200:
                        task_id = r.json()["output"]["task_id"]
                        created.append(task_id)
                        if kind > 0.9:  # cancel some, PENDING or RUNNING
                            clients[owner].post(f"/api/v1/tasks/{task_id}/cancel")
                except httpx.TransportError:
                    pass  # the API was killed under us: a create may or may not have been made
            if time.monotonic() - last_kill > rng.uniform(0.2, 0.6):
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
        try:
            upstream = {task.id: task for task in provider_tasks(provider)}
        finally:
            provider.stop()
    assert _enough(kills) and kills["relay"] > 0, kills

    with db.connect() as conn:
        tasks = conn.execute(select(Task.id, Task.owner, Task.model, Task.status, Task.usage, Task.engine,
                                    Task.upstream_id)).all()
        ledger = conn.execute(select(LedgerEntry.task_id, LedgerEntry.kind, LedgerEntry.amount)).all()
        balances = dict(conn.execute(select(Account.owner, Account.balance)).all())
    db.dispose()
    assert len(tasks) >= TASKS and {t.status for t in tasks} <= {"SUCCEEDED", "FAILED", "CANCELED"}
    assert 3 * sum(t.model == RELAY for t in tasks) >= len(tasks)
    by_task: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for entry in ledger:
        if entry.task_id:
            by_task[entry.task_id][entry.kind] = entry.amount
    expected = {owner: to_micro(CREDIT) for owner in OWNERS}
    for task in tasks:
        money = by_task[task.id]
        assert money["hold"] == -money["release"], (task, money)  # held once, released once
        if task.status == "SUCCEEDED":
            price = PRICE[task.model] * _billed_seconds(task, upstream)
            cost = to_micro(price)
            assert money["charge"] == -cost and Decimal(task.usage["cost"]) == price, (task, money)
            expected[task.owner] -= cost
        else:
            assert "charge" not in money, (task, money)
    assert balances == expected
    assert not accounts.audit(make_engine(database_url))
    # Each relayed task was submitted once at most, and no provider task serves two of ours.
    prompts = [task.spec["prompt"] for task in upstream.values()]
    assert len(prompts) == len(set(prompts)), prompts
    adopted = [t.upstream_id for t in tasks if t.upstream_id]
    assert len(adopted) == len(set(adopted))
    relayed_ok = [t for t in tasks if t.model == RELAY and t.status == "SUCCEEDED"]
    assert relayed_ok and any(t.usage["input_video_duration"] for t in relayed_ok)


def _enough(kills: collections.Counter[str]) -> bool:
    """12 kills at least, and of each kind of process: the API, a worker, the relay."""
    return sum(kills.values()) >= 12 and bool(kills["api"] and kills["worker1"] + kills["worker2"] and kills["relay"])


def _billed_seconds(task: Any, upstream: dict[str, Any]) -> int:
    """What a task that SUCCEEDED is billed for: the seconds its engine made, or for a relayed
    one, the usage the provider reported for the provider's task it was matched with."""
    if task.model == LOCAL:
        assert task.engine == "scripted", task
        return int(task.usage["duration"])
    assert task.engine == "dashscope" and task.upstream_id in upstream, task
    reported = upstream[task.upstream_id].usage
    assert task.usage["duration"] == reported["duration"], (task, reported)
    return int(reported["duration"])


def _open_tasks(db: Engine) -> dict[str, int]:
    """Unfinished tasks by model and status (what a deadline's failure shows)."""
    with db.connect() as conn:
        rows = conn.execute(
            select(Task.model, Task.status, func.count()).where(Task.status.in_(["PENDING", "RUNNING"]))
            .group_by(Task.model, Task.status)
        ).all()
    return {f"{model} {status}": count for model, status, count in rows}


def _all_ended(db: Engine) -> bool:
    return not _open_tasks(db)
