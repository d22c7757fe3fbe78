"""`AsyncClient`: the same flows as `Client`, driven with asyncio.run (no plugin)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ref2video.client import (
    AmbiguousTaskId,
    AsyncClient,
    AuthenticationError,
    InvalidRequest,
    Task,
    TaskFailed,
    TaskNotFound,
    TransportError,
)
from ref2video.store.models import Task as TaskRow
from tests.api.test_cancel_list import set_ids
from tests.client.conftest import QUICK, assert_mp4, make_png
from tests.client.flaky import FlakyServer
from tests.live import LiveServer, free_port, ref_url
from tests.media.media_files import make_video


class CountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await super().handle_async_request(request)


def test_create_upload_wait_get_list_download(server: LiveServer, tmp_path: Path) -> None:
    first = make_png(tmp_path / "first.png")
    clip = make_video(tmp_path / "clip.mp4", 1.5)
    third = make_png(tmp_path / "third.png", size=(256, 256))

    async def main() -> tuple[Task, Task, list[Task], Path, Any]:
        async with AsyncClient(server.url, server.key, backoff=0.05) as client:
            created = await client.create(
                "character1 character2 character3 character4 refs=image,video,image,image steps=6 step_ms=120",
                [first, str(clip), ref_url("a.png"), third.as_uri()], size="832*1088", duration=2, seed=11)
            seen: list[Task] = []
            final = await client.wait(created, poll_interval=0.05, timeout=30, on_progress=seen.append)
            got = await client.get(created.id)
            path = await client.download(created.id, tmp_path / "out" / "video.mp4")
            page = await client.list(status="SUCCEEDED")
            return created, final, seen, path, (got, page)

    created, final, seen, path, (got, page) = asyncio.run(main())
    assert created.status == "PENDING"
    assert final.status == "SUCCEEDED" and final.seed == 11 and final.usage and final.usage.size == "832*1088"
    progress = [t.progress for t in seen if t.status == "RUNNING" and t.progress is not None]
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress), [(t.status, t.progress) for t in seen]
    assert got.status == "SUCCEEDED" and got.video_url
    assert [t.id for t in page] == [created.id] and page.total == 1
    assert_mp4(path, size=(64, 48))
    with server.service.db.connect() as conn:
        spec = conn.execute(select(TaskRow.spec).where(TaskRow.id == created.id)).scalar_one()
    urls = spec["reference_urls"]
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["first.png", "clip.mp4", "a.png", "third.png"]


def test_uploads_of_one_create_run_concurrently(server: LiveServer, tmp_path: Path) -> None:
    """Three uploads through a proxy that holds each until all three are in (or 20 s: one after
    another, each would be held that long alone) are held there at the same time."""
    files = [make_png(tmp_path / f"p{i}.png") for i in range(3)]
    proxy = FlakyServer(upstream=server.url)
    proxy.together = 3
    try:
        async def main() -> Task:
            async with AsyncClient(proxy.url, server.key) as client:
                return await client.create("character1 character2 character3", files)

        task = asyncio.run(main())
    finally:
        proxy.close()
    assert task.status == "PENDING" and proxy.count("POST", "/api/v1/uploads") == 3
    assert proxy.most_in_flight == 3


def test_cancel_generate_and_errors(make_server: Callable[..., LiveServer], server: LiveServer,
                                    tmp_path: Path) -> None:
    idle = make_server(workers=0)

    async def main() -> None:
        async with AsyncClient(idle.url, idle.key) as client:
            task = await client.create(QUICK, [ref_url("a.png")])
            await client.cancel(task)
            assert (await client.get(task.id)).status == "CANCELED"
            with pytest.raises(InvalidRequest, match="UnsupportedOperation"):
                await client.cancel(task.id)
        async with AsyncClient(server.url, server.key) as client:
            done = await client.generate(QUICK, [ref_url("b.jpg")], tmp_path / "ok.mp4", poll_interval=0.05,
                                         timeout=30)
            assert done.status == "SUCCEEDED"
            with pytest.raises(TaskFailed) as info:
                await client.generate("character1 fail=InvalidParameter", [ref_url("a.png")],
                                      tmp_path / "no.mp4", poll_interval=0.05, timeout=30)
            assert info.value.task.code == "InvalidParameter"
            assert "the scripted engine was told to fail" in str(info.value)
        async with AsyncClient(server.url, "r2v-000000000000-nope") as client:
            with pytest.raises(AuthenticationError) as auth:
                await client.list()
            assert auth.value.code == "InvalidApiKey" and auth.value.request_id

    asyncio.run(main())
    assert_mp4(tmp_path / "ok.mp4")
    assert not (tmp_path / "no.mp4").exists()


def test_retries(server: LiveServer, flaky: FlakyServer, sleeps: list[float]) -> None:
    flaky.upstream = server.url
    task_id = server.create()
    transport = CountingTransport()

    async def main() -> None:
        flaky.then(429, retry_after="1").then(503)
        async with AsyncClient(flaky.url, server.key, backoff=0.05) as client:
            assert (await client.get(task_id)).id == task_id
            flaky.then(500)
            with pytest.raises(Exception, match="InternalError"):
                await client.get(task_id)
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", "key", max_retries=2, backoff=0.01,
                               transport=transport) as client:
            with pytest.raises(TransportError) as info:
                await client.get("t1")
            assert isinstance(info.value.__cause__, httpx.ConnectError)

    asyncio.run(main())
    assert flaky.count("GET") == 4  # 429, 503, the answer; then one 500, not retried
    assert len(transport.requests) == 3
    # Retry-After, then backoff * 2**n jittered into [50%, 100%]: 0.05-0.1 s; for the closed
    # port 0.005-0.01 s, then 0.01-0.02 s.
    assert len(sleeps) == 4 and sleeps[0] == 1.0, sleeps
    assert 0.05 <= sleeps[1] <= 0.1 and 0.005 <= sleeps[2] <= 0.01 and 0.01 <= sleeps[3] <= 0.02, sleeps


def test_resolve(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)

    async def main() -> None:
        async with AsyncClient(server.url, server.key) as client:
            made = [(await client.create(QUICK, [ref_url("a.png")])).id for _ in range(3)]
            set_ids(server, {made[0]: "abcd1111-0000-4000-8000-000000000000",
                             made[1]: "abcd2222-0000-4000-8000-000000000000"})
            assert await client.resolve("abcd2") == "abcd2222-0000-4000-8000-000000000000"
            assert await client.resolve(made[2][:5]) == made[2]
            with pytest.raises(AmbiguousTaskId):
                await client.resolve("abcd")
            with pytest.raises(TaskNotFound):
                await client.resolve("ffff")

    asyncio.run(main())
