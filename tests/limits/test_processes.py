"""Two `ref2video serve` processes on one PostgreSQL database: together they never admit more
than one key's limits allow, and one idempotency key never makes two tasks, however the
requests are spread over them."""

from __future__ import annotations

import collections
import contextlib
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from ref2video.store.db import make_engine, migrate
from ref2video.store.keys import create_key
from ref2video.store.models import IdempotencyKey, Task

from tests.acceptance.procs import env_for, spawn, stop, wait_healthy
from tests.live import free_port, make_body

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

GATEWAY = "/task/bailian/ref2video"


class Pair:
    """Two serve processes on one database, and a key made before they start."""

    def __init__(self, db: Engine, key: str, urls: list[str]) -> None:
        self.db, self.key, self.urls = db, key, urls

    def clients(self, n: int) -> list[httpx.Client]:
        """`n` clients, alternating between the two processes."""
        return [httpx.Client(base_url=self.urls[i % 2], headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
                for i in range(n)]

    def tasks(self) -> int:
        """The test key's tasks (the warm-up's are another owner's)."""
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Task).where(Task.owner == "default")).scalar_one())


@contextlib.contextmanager
def serve_pair(tmp_path: Path, pg_url: str, **settings: object) -> Iterator[Pair]:
    db = make_engine(pg_url)
    migrate(db)
    with db.begin() as conn:
        key = create_key(conn, owner="default", name="test")[0]
        warm_key = create_key(conn, owner="warm-up", name="warm-up")[0]
    procs, urls = [], []
    try:
        for i in range(2):
            port = free_port()
            env = env_for(tmp_path / f"data{i}", pg_url, workers=0, **settings)
            procs.append(spawn(["serve", "--port", str(port)], env, tmp_path / f"serve{i}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs):
            wait_healthy(url, proc)
            # The first create of a process takes a while (imports, pools): not in a measured window.
            warm = httpx.post(f"{url}{GATEWAY}", json=make_body(), headers={"Authorization": f"Bearer {warm_key}"},
                              timeout=60)
            assert warm.status_code == 200, warm.text
        yield Pair(db, key, urls)
    finally:
        for proc in procs:
            stop(proc)
        db.dispose()


@pytest.fixture
def rate_pair(tmp_path: Path, pg_url: str) -> Iterator[Pair]:
    with serve_pair(tmp_path, pg_url, rate_create_per_second=10, rate_create_burst=5,
                    rate_query_per_second=40, rate_query_burst=20) as pair:
        yield pair


def _hammer(clients: list[httpx.Client], send, seconds: float) -> tuple[collections.Counter[int], float]:  # type: ignore[no-untyped-def]
    """Every client sends as fast as it can for `seconds`; the status codes, and the time from
    just before the first request left to just after the last answer came."""
    codes: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    start = time.time()
    deadline = time.monotonic() + seconds

    def run(client: httpx.Client) -> None:
        while time.monotonic() < deadline:
            status = send(client).status_code
            with lock:
                codes[status] += 1

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, clients))
    return codes, time.time() - start


def test_two_processes_never_admit_more_than_the_rate(rate_pair: Pair) -> None:
    clients = rate_pair.clients(6)
    codes, elapsed = _hammer(clients, lambda c: c.post(GATEWAY, json=make_body()), 3.0)
    assert set(codes) == {200, 429}, codes
    made = rate_pair.tasks()  # counted where the server keeps them
    assert made == codes[200]
    assert 5 <= made <= 5 + 10 * elapsed, (made, elapsed, codes)
    # And the limit is not much stricter either, unless a loaded machine sent too few to tell.
    assert made >= min(5 + 10 * elapsed * 0.25, codes.total() / 2), (made, elapsed, codes)

    task_id = clients[0].post(GATEWAY, json=make_body()).json().get("output", {}).get("task_id", "x")
    time.sleep(1)  # let the create bucket refill a little; queries have their own anyway
    codes, elapsed = _hammer(clients, lambda c: c.get(f"/api/v1/tasks/{task_id}"), 3.0)
    assert set(codes) == {200, 429}, codes
    assert codes[200] <= 20 + 40 * elapsed, (codes, elapsed)
    # (a loaded machine wastes some leases, or sends too few to tell)
    assert codes[200] >= min(20 + 40 * elapsed * 0.25, codes.total() / 2), (codes, elapsed)
    for client in clients:
        client.close()


def test_two_processes_never_pass_the_unfinished_quota(tmp_path: Path, pg_url: str) -> None:
    with serve_pair(tmp_path, pg_url, max_unfinished_tasks=3) as pair:
        clients = pair.clients(8)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda c: c.post(GATEWAY, json=make_body()).status_code, clients * 4))
        assert codes.count(200) == 3 and codes.count(429) == 29, codes
        assert pair.tasks() == 3
        for client in clients:
            client.close()


def test_one_idempotency_key_makes_one_task_across_processes(tmp_path: Path, pg_url: str) -> None:
    with serve_pair(tmp_path, pg_url) as pair:
        clients = pair.clients(8)
        barrier = threading.Barrier(8)
        keys = [f"key-{i}" for i in range(10)]

        def send(client: httpx.Client) -> list[tuple[str, int, str]]:
            seen = []
            for key in keys:
                barrier.wait(10)  # every client sends this key at once, four to each process
                r = client.post(GATEWAY, json=make_body(prompt=f"for {key}"), headers={"Idempotency-Key": key})
                seen.append((key, r.status_code, r.json().get("output", {}).get("task_id", r.text)))
            return seen

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(itertools.chain.from_iterable(pool.map(send, clients)))
        assert {status for _, status, _ in answers} == {200}, answers
        by_key: dict[str, set[str]] = collections.defaultdict(set)
        for key, _, task_id in answers:
            by_key[key].add(task_id)
        assert all(len(ids) == 1 for ids in by_key.values()), by_key
        assert pair.tasks() == len(keys)
        with pair.db.connect() as conn:
            bound = dict(conn.execute(select(IdempotencyKey.key, IdempotencyKey.task_id)).all())
        assert bound == {key: next(iter(ids)) for key, ids in by_key.items()}
        for client in clients:
            client.close()
