"""`ProviderClient` against a second ref2video server playing the provider (its scripted engine
is steered by the prompt: `steps=3 step_ms=50`, `fail=CODE`, `refs=image`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from PIL import Image

from ref2video.errors import RetryableEngineError
from ref2video.engines.dashscope import ProviderClient, ProviderError, UpstreamTask
from tests.live import LiveServer, make_body
from tests.relay.conftest import assert_mp4

T = TypeVar("T")
QUICK = "character1 waves steps=3 step_ms=50"


class RecordingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(await request.aread())  # before the upload's file is closed
        return await super().handle_async_request(request)


def run(server: LiveServer, work: Callable[[ProviderClient], Coroutine[Any, Any, T]], *,
        keys: list[str] | None = None, **options: Any) -> T:
    """Run `work` with a client of `server`'s native API."""
    async def main() -> T:
        async with ProviderClient(f"{server.url}/api/v1", keys or [server.key], timeout=10, **options) as client:
            return await work(client)
    return asyncio.run(main())


async def wait_done(client: ProviderClient, task: UpstreamTask, timeout: float = 20) -> UpstreamTask:
    deadline = time.monotonic() + timeout
    while not task.done:
        assert time.monotonic() < deadline, f"still {task.status} after {timeout} s"
        await asyncio.sleep(0.05)
        task = await client.get(task.task_id, key_index=task.key_index)
    return task


def test_submit_poll_succeed_and_download(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()
    transport = RecordingTransport()

    async def work(client: ProviderClient) -> tuple[UpstreamTask, UpstreamTask, int]:
        created = await client.submit(make_body(QUICK, duration=4), oss=False)
        final = await wait_done(client, created)
        assert final.video_url
        size = await client.download(final.video_url, tmp_path / "out" / "video.mp4", max_bytes=10 << 20)
        return created, final, size

    created, final, size = run(server, work, transport=transport)
    assert created.status == "PENDING" and created.key_index == 0 and created.request_id
    assert final.status == "SUCCEEDED" and final.task_id == created.task_id
    assert final.usage == {"duration": 4, "input_video_duration": 0, "output_video_duration": 4,
                           "video_count": 1, "SR": 720, "size": "1280*720", "audio": True}
    assert final.submit_time and final.end_time and final.code is None
    assert final.raw["output"]["task_status"] == "SUCCEEDED"
    video = tmp_path / "out" / "video.mp4"
    assert video.stat().st_size == size > 0
    assert_mp4(video)
    assert [p.name for p in video.parent.iterdir()] == ["video.mp4"]  # no temporary file left
    create, *polls, download = transport.requests
    assert create.url.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert create.headers["X-DashScope-Async"] == "enable"
    assert "X-DashScope-OssResourceResolve" not in create.headers
    assert create.headers["Authorization"] == f"Bearer {server.key}"
    assert all(p.url.path == f"/api/v1/tasks/{created.task_id}" for p in polls)
    assert "Authorization" not in download.headers  # the key never goes to the video's host


def test_failed_task_carries_the_provider_code(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()

    async def work(client: ProviderClient) -> UpstreamTask:
        return await wait_done(client, await client.submit(make_body("character1 fail=InvalidParameter"), oss=False))

    task = run(server, work)
    assert task.status == "FAILED" and task.done
    assert (task.code, task.message) == ("InvalidParameter", "the scripted engine was told to fail")
    assert task.video_url is None and task.usage == {}


def test_upload_then_submit_with_the_oss_key(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()
    png = tmp_path / "hero.png"
    Image.new("RGB", (320, 240), (10, 120, 200)).save(png, "PNG")
    transport = RecordingTransport()

    async def work(client: ProviderClient) -> tuple[str, UpstreamTask]:
        url = await client.upload(png, "wan2.6-r2v-flash")
        body = make_body("character1 waves refs=image steps=2", urls=[url])
        return url, await wait_done(client, await client.submit(body, oss=True))

    url, task = run(server, work, transport=transport)
    assert url.startswith("oss://") and url.endswith("/hero.png")
    assert task.status == "SUCCEEDED", (task.code, task.message)
    policy, upload, create = transport.requests[:3]
    assert (policy.method, policy.url.path, dict(policy.url.params)) == (
        "GET", "/api/v1/uploads", {"action": "getPolicy", "model": "wan2.6-r2v-flash"})
    assert upload.url.path == "/api/v1/uploads/oss" and "Authorization" not in upload.headers
    form = transport.bodies[1]
    for name in ("OSSAccessKeyId", "Signature", "policy", "key", "x-oss-object-acl", "x-oss-forbid-overwrite",
                 "success_action_status", "x-oss-content-type", "file"):
        assert f'name="{name}"'.encode() in form, name
    assert b"image/png" in form and form.index(b'name="file"') > form.index(b'name="key"')  # the file goes last
    assert create.headers["X-DashScope-OssResourceResolve"] == "enable"


def test_oss_key_of_another_account_is_refused(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()
    png = tmp_path / "hero.png"
    Image.new("RGB", (320, 240)).save(png, "PNG")

    async def work(client: ProviderClient) -> None:
        url = await client.upload(png, "wan2.6-r2v-flash", key_index=0)
        await client.submit(make_body(urls=[url]), oss=True, key_index=1)

    with pytest.raises(ProviderError) as caught:
        run(server, work, keys=[server.key, server.new_key(owner="someone-else")])
    assert (caught.value.code, caught.value.status) == ("InvalidURL", 400)


def test_cancel_a_pending_task(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)

    async def work(client: ProviderClient) -> tuple[UpstreamTask, ProviderError]:
        task = await client.submit(make_body(), oss=False)
        await client.cancel(task.task_id)
        with pytest.raises(ProviderError) as again:
            await client.cancel(task.task_id)
        return await client.get(task.task_id), again.value

    task, again = run(server, work)
    assert task.status == "CANCELED" and task.done
    assert (again.code, again.status) == ("UnsupportedOperation", 400)
    assert not isinstance(again, RetryableEngineError)


def test_list_by_time_window(make_server: Callable[..., LiveServer]) -> None:
    # The server reads list times in Asia/Shanghai; a client writing UTC would miss by 8 hours.
    server = make_server(workers=0, timezone="Asia/Shanghai")

    async def work(client: ProviderClient) -> dict[str, list[str]]:
        flash = await client.submit(make_body(), oss=False)
        full = await client.submit(make_body(model="wan2.6-r2v"), oss=False)
        now = datetime.now(UTC)  # with microseconds: the end is rounded up, so both are inside
        window = {
            "all": await client.list(now - timedelta(minutes=1), now),
            "flash": await client.list(now - timedelta(minutes=1), now, model="wan2.6-r2v-flash"),
            "pending": await client.list(now - timedelta(minutes=1), now, status="PENDING"),
            "succeeded": await client.list(now - timedelta(minutes=1), now, status="SUCCEEDED"),
            "earlier": await client.list(now - timedelta(hours=2), now - timedelta(hours=1)),
            "page1": await client.list(now - timedelta(minutes=1), now, page_no=1, page_size=1),
            "page2": await client.list(now - timedelta(minutes=1), now, page_no=2, page_size=1),
        }
        assert window["flash"][0].model_name == "wan2.6-r2v-flash" and window["flash"][0].gmt_create
        created = [s.gmt_create or 0 for s in window["all"]]
        assert created == sorted(created, reverse=True)  # newest first
        return {"ids": [flash.task_id, full.task_id]} | {k: [s.task_id for s in v] for k, v in window.items()}

    found = run(server, work, tz=ZoneInfo("Asia/Shanghai"))
    flash, full = found["ids"]
    assert sorted(found["all"]) == sorted([flash, full]) and found["pending"] == found["all"]
    assert found["flash"] == [flash] and found["page1"] + found["page2"] == found["all"]
    assert found["succeeded"] == [] and found["earlier"] == []


def test_keys_take_turns_and_each_task_stays_with_its_account(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)
    keys = [server.key, server.new_key(owner="second-account")]

    async def work(client: ProviderClient) -> list[tuple[int, str, str]]:
        tasks = [await client.submit(make_body(), oss=False) for _ in range(3)]
        seen = []
        for task in tasks:
            mine = await client.get(task.task_id, key_index=task.key_index)
            other = await client.get(task.task_id, key_index=1 - task.key_index)
            seen.append((task.key_index, mine.status, other.status))
        return seen

    assert run(server, work, keys=keys) == [(0, "PENDING", "UNKNOWN"), (1, "PENDING", "UNKNOWN"),
                                            (0, "PENDING", "UNKNOWN")]


@pytest.mark.parametrize("call", ["submit", "get"])
def test_a_bad_key_is_a_permanent_error(make_server: Callable[..., LiveServer], call: str) -> None:
    server = make_server(workers=0)

    async def work(client: ProviderClient) -> UpstreamTask:
        return await (client.submit(make_body(), oss=False) if call == "submit" else client.get("some-id"))

    with pytest.raises(ProviderError) as caught:
        run(server, work, keys=["r2v-nosuchkey-0000"])
    assert (caught.value.code, caught.value.status) == ("InvalidApiKey", 401)
    assert caught.value.message.endswith("Invalid API-key provided.")
    assert not isinstance(caught.value, RetryableEngineError)


def test_refusals_carry_the_provider_envelope(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)

    async def work(client: ProviderClient) -> list[ProviderError]:
        errors = []
        for body in (make_body(model="wan9-nope"), make_body(duration=99)):
            with pytest.raises(ProviderError) as caught:
                await client.submit(body, oss=False)
            errors.append(caught.value)
        return errors

    missing, invalid = run(server, work)
    assert (missing.code, missing.status) == ("ModelNotFound", 404)
    assert (invalid.code, invalid.status) == ("InvalidParameter", 400) and "duration" in invalid.message


def test_download_over_the_limit_leaves_nothing(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()

    async def work(client: ProviderClient) -> ProviderError:
        task = await wait_done(client, await client.submit(make_body(QUICK), oss=False))
        assert task.video_url
        with pytest.raises(ProviderError) as caught:
            await client.download(task.video_url, tmp_path / "out" / "video.mp4", max_bytes=1000)
        return caught.value

    error = run(server, work)
    assert error.code == "ResultTooLarge"
    assert list((tmp_path / "out").iterdir()) == []  # neither the video nor a part file
