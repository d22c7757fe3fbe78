"""The unfinished-task quota over real HTTP, on both databases: an owner (all its keys) may have
`max_unfinished_tasks` PENDING or RUNNING at once; past it a create is refused with 429 and
makes nothing, and once one ends the next create passes."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from sqlalchemy import func, select

from ref2video.store.models import Task

from tests.live import LiveServer, make_body

from .conftest import assert_throttled

GATEWAY = "/task/bailian/ref2video"


def _count(server: LiveServer, owner: str = "default") -> int:
    with server.service.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Task).where(Task.owner == owner)).scalar_one())


def test_an_owner_past_its_unfinished_tasks_is_refused(limited: Callable[..., LiveServer]) -> None:
    server = limited(max_unfinished_tasks=2)
    second_key = server.new_key()  # the same owner: the quota is the owner's
    first = server.create()
    server.create(key=second_key)
    refused = server.client().post(GATEWAY, json=make_body())
    assert_throttled(refused, limit=2, retry_after=5,
                     words="this account has 2 unfinished tasks, the most it may have at once")
    assert_throttled(server.client(second_key).post(GATEWAY, json=make_body()), limit=2)
    assert _count(server) == 2
    assert server.create(key=server.new_key("someone else"))  # another owner has its own
    assert server.client().post(f"/api/v1/tasks/{first}/cancel").status_code == 200  # CANCELED: finished
    assert server.create()
    assert_throttled(server.client().post(GATEWAY, json=make_body()), limit=2)


def test_running_tasks_count_and_ended_ones_do_not(make_server: Callable[..., LiveServer], tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    server = make_server(max_unfinished_tasks=1, workers=1)
    running = server.create(make_body(prompt=f"steps=2 step_ms=10 gate={gate}"))
    server.wait(running, ("RUNNING",))
    assert_throttled(server.client().post(GATEWAY, json=make_body()), limit=1)
    gate.touch()
    assert server.wait(running)["output"]["task_status"] == "SUCCEEDED"
    assert server.create()


def test_concurrent_creates_never_pass_the_quota(limited: Callable[..., LiveServer]) -> None:
    server = limited(max_unfinished_tasks=3)
    client = server.client()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: client.post(GATEWAY, json=make_body()).status_code, range(24)))
    assert sorted(set(codes)) == [200, 429] and codes.count(200) == 3, codes
    assert _count(server) == 3
