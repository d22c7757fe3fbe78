"""`Client` against the real app on loopback: create, upload, wait, get, list, cancel, download, generate."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest
from sqlalchemy import select

from ref2video.client import (
    AmbiguousTaskId,
    Client,
    ClientError,
    InvalidRequest,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskSummary,
    Usage,
    WaitTimeout,
)
from ref2video.store.models import Task as TaskRow
from tests.client.conftest import QUICK, assert_mp4, make_png, record_sleeps
from tests.http_server import Server
from tests.api.test_cancel_list import set_ids
from tests.live import LiveServer, ref_url
from tests.media.media_files import make_video


def stored_references(server: LiveServer, task_id: str) -> list[str]:
    with server.service.db.connect() as conn:
        spec = conn.execute(select(TaskRow.spec).where(TaskRow.id == task_id)).scalar_one()
    return list(spec["reference_urls"])


def test_create_from_urls_then_wait_reports_rising_progress(client: Client) -> None:
    task = client.create("character1 meets character2 steps=8 step_ms=120 refs=image,image",
                         [ref_url("a.png"), ref_url("b.jpg")], size="1280*720", duration=2, seed=7,
                         shot_type="multi", audio=False, watermark=False, negative_prompt="blur")
    assert isinstance(task, Task) and task.id and task.status == "PENDING" and not task.done
    seen: list[Task] = []
    final = client.wait(task, poll_interval=0.05, timeout=30, on_progress=seen.append)
    assert final.status == "SUCCEEDED" and final.done and final.succeeded
    assert seen[-1] is final and len(seen) >= 3
    progress = [t.progress for t in seen if t.status == "RUNNING" and t.progress is not None]
    assert progress == sorted(progress), progress
    assert any(0 < p < 100 for p in progress), [(t.status, t.progress) for t in seen]
    assert final.progress == 100 and final.seed == 7 and final.engine == "scripted"
    assert final.video_url and final.video_url.startswith("http://127.0.0.1:")
    assert final.submit_time and final.scheduled_time and final.end_time and final.code is None
    assert final.usage == Usage(duration=2, input_video_duration=0, output_video_duration=2, video_count=1,
                                SR=720, size="1280*720", audio=False)

    again = client.get(task.id)
    assert again.status == "SUCCEEDED" and again.usage == final.usage
    assert again.raw["output"]["task_id"] == task.id and "request_id" in again.raw


def test_local_paths_and_file_urls_are_uploaded_first_in_order(client: Client, server: LiveServer,
                                                                tmp_path: Path) -> None:
    first = make_png(tmp_path / "first hero.png", size=(240, 240))
    clip = make_video(tmp_path / "clip.mp4", 1.5, size=(320, 240))
    third = make_png(tmp_path / "third.png", size=(400, 300), colour=(200, 10, 10))
    references: list[str | os.PathLike[str]] = [first, ref_url("a.png"), str(clip), third.as_uri()]
    task = client.create("character1 character2 character3 character4 refs=image,image,video,image steps=1",
                         references, duration=2)
    urls = stored_references(server, task.id)
    assert [u.split("://")[0] for u in urls] == ["oss", "http", "oss", "oss"]
    assert urls[0].endswith("/first_hero.png") and urls[2].endswith("/clip.mp4") and urls[3].endswith("/third.png")
    assert urls[1] == ref_url("a.png")
    # The engine checks the kinds in order (refs=...): it fails the task on a mismatch.
    assert client.wait(task, poll_interval=0.05, timeout=30).status == "SUCCEEDED"

    url = client.upload(third)
    assert url.startswith("oss://ref2video-uploads/") and url.endswith("/third.png") and url != urls[3]


def test_list_pages_and_filters(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)
    with Client(server.url, server.key) as client:
        ids = [client.create(QUICK, [ref_url("a.png")], model=m).id
               for m in ("wan2.6-r2v-flash", "wan2.6-r2v", "wan2.6-r2v-flash")]
        client.cancel(ids[0])

        page = client.list(page_size=2)
        assert (page.total, page.total_page, page.page_no, page.page_size) == (3, 2, 1, 2)
        assert [t.id for t in page.items] == [ids[2], ids[1]] and [t.id for t in page] == [ids[2], ids[1]]
        item = page.items[0]
        assert isinstance(item, TaskSummary) and item.status == "PENDING" and item.model == "wan2.6-r2v-flash"
        now = datetime.now(UTC)
        assert item.created.tzinfo is not None and abs(item.created - now) < timedelta(minutes=1)
        assert item.started is None and item.ended is None

        assert [t.id for t in client.list(page_no=2, page_size=2)] == [ids[0]]
        canceled = client.list(status="CANCELED").items
        assert [t.id for t in canceled] == [ids[0]] and canceled[0].ended is not None
        assert client.list(status=["pending", "CANCELED"]).total == 3
        assert [t.id for t in client.list(model="wan2.6-r2v")] == [ids[1]]
        assert client.list(start=now - timedelta(minutes=5)).total == 3
        assert client.list(start=now + timedelta(hours=1)).total == 0
        assert client.list(end=now - timedelta(hours=1)).total == 0
        with pytest.raises(InvalidRequest, match="status must be one of"):
            client.list(status="DONE")


def test_cancel_a_pending_task(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server(workers=0)
    with Client(server.url, server.key) as client:
        task = client.create(QUICK, [ref_url("a.png")])
        assert client.get(task).status == "PENDING"
        client.cancel(task)
        canceled = client.get(task.id)
        assert canceled.status == "CANCELED" and canceled.done and canceled.end_time
        with pytest.raises(InvalidRequest) as info:
            client.cancel(task.id)
        assert info.value.code == "UnsupportedOperation" and info.value.status_code == 400
        # No video: download refuses, and leaves no file behind.
        with pytest.raises(TaskFailed, match="CANCELED, not SUCCEEDED") as failed:
            client.download(task.id, tmp_path / "out" / "none.mp4")
        assert failed.value.task.status == "CANCELED"
        assert not (tmp_path / "out").exists()
        assert client.wait(task, timeout=5).status == "CANCELED"


def test_download_writes_a_valid_mp4(client: Client, tmp_path: Path) -> None:
    task = client.wait(client.create(QUICK, [ref_url("a.png")], duration=2), poll_interval=0.05, timeout=30)
    by_id = client.download(task.id, tmp_path / "sub" / "by-id.mp4")
    assert by_id == tmp_path / "sub" / "by-id.mp4"
    assert_mp4(by_id, size=(64, 48))
    into_dir = client.download(task, tmp_path)
    assert into_dir == tmp_path / f"{task.id}.mp4"
    assert into_dir.read_bytes() == by_id.read_bytes()
    # A fresh Task from create() has no video yet: download queries it first.
    again = client.download(Task(id=task.id, status="PENDING"), tmp_path / "again.mp4")
    assert again.read_bytes() == by_id.read_bytes()


def test_the_api_key_never_goes_to_another_host(client: Client, server: LiveServer, tmp_path: Path) -> None:
    """A relay's video_url may live on a storage host: the download goes there without the key."""
    done = client.wait(client.create(QUICK, [ref_url("a.png")]), poll_interval=0.05, timeout=30)
    own = client.download(done, tmp_path / "own.mp4")
    storage = Server()
    try:
        url = storage.serve("/video.mp4?sig=x", own.read_bytes(), headers={"Content-Type": "video/mp4"})
        elsewhere = replace(done, video_url=url)
        path = client.download(elsewhere, tmp_path / "elsewhere.mp4")
    finally:
        storage.close()
    assert path.read_bytes() == own.read_bytes()
    (headers,) = storage.hits_for("/video.mp4?sig=x")
    assert "authorization" not in headers and server.key not in str(headers)


def test_generate_end_to_end(client: Client, png: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    out = tmp_path / "video.mp4"
    task = client.generate("character1 waves at character2 refs=image,image steps=3 step_ms=20",
                           [png, ref_url("b.jpg")], out, size="960*960", duration=3, timeout=30,
                           poll_interval=0.05, on_progress=lambda t: seen.append(t.status))
    assert task.status == "SUCCEEDED" and seen[-1] == "SUCCEEDED"
    assert task.usage is not None and task.usage.size == "960*960" and task.usage.output_video_duration == 3
    assert_mp4(out)


def test_a_failing_task_is_returned_by_wait_and_raised_by_generate(client: Client, tmp_path: Path) -> None:
    failed = client.wait(client.create("character1 fail=InvalidParameter", [ref_url("a.png")]),
                         poll_interval=0.05, timeout=30)
    assert failed.status == "FAILED" and failed.done
    assert failed.code == "InvalidParameter" and failed.message == "the scripted engine was told to fail"

    out = tmp_path / "out" / "never.mp4"
    with pytest.raises(TaskFailed) as info:
        client.generate("character1 fail=Moderation", [ref_url("a.png")], out, poll_interval=0.05, timeout=30)
    task = info.value.task
    assert task.status == "FAILED" and task.code == "Moderation"
    assert str(info.value) == f"task {task.id} ended FAILED: Moderation: the scripted engine was told to fail"
    assert not out.parent.exists()


def test_wait_times_out_with_the_last_state(client: Client) -> None:
    task = client.create("character1 steps=100 step_ms=50", [ref_url("a.png")])
    polls: list[Task] = []
    with pytest.MonkeyPatch.context() as patch:  # the client's time passes only as it sleeps
        sleeps = record_sleeps(patch)
        with pytest.raises(WaitTimeout) as info:
            client.wait(task, timeout=0.625, poll_interval=0.25, on_progress=polls.append)
    # The interval, then what was left of the deadline; a poll before each pause and one at the end.
    assert sleeps == [0.25, 0.25, 0.125]
    assert len(polls) == 4 and info.value.task == polls[-1]
    assert info.value.task.id == task.id and not info.value.task.done
    assert f"task {task.id} is still {info.value.task.status}" in str(info.value)
    client.cancel(task)  # a RUNNING task of a local engine stops too
    assert client.wait(task, poll_interval=0.05, timeout=10).status == "CANCELED"


def test_an_unknown_id_is_unknown_and_done(client: Client) -> None:
    task = client.wait("no-such-task", timeout=5)
    assert task.status == "UNKNOWN" and task.done and task.id == "no-such-task"


def test_wan27_sends_the_media_form(client: Client, png: Path, server: LiveServer) -> None:
    """Each reference's type from its file name; the prompt names them Image 1, Video 1."""
    task = client.create("Image 1 greets Video 1 refs=image,video steps=2", [png, ref_url("c.mp4")],
                         model="wan2.7-r2v", resolution="720P", ratio="9:16", duration=4)
    done = client.wait(task, timeout=60)
    assert done.status == "SUCCEEDED", done.raw
    assert done.usage is not None and (done.usage.ratio, done.usage.SR, done.usage.size) == ("9:16", 720, "")
    with server.service.db.connect() as conn:
        spec = conn.execute(select(TaskRow.spec).where(TaskRow.id == task.id)).scalar_one()
    assert [item["type"] for item in spec["media"]] == ["reference_image", "reference_video"]
    assert spec["media"][0]["url"].startswith("oss://")
    with pytest.raises(ClientError, match="image or a video"):
        client.create("Image 1", ["https://example.com/picture"], model="wan2.7-r2v")


def test_resolve_turns_a_unique_prefix_into_the_whole_id(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)
    with Client(server.url, server.key) as client:
        made = [client.create(QUICK, [ref_url("a.png")]).id for _ in range(3)]
        set_ids(server, {made[0]: "abcd1111-0000-4000-8000-000000000000",
                         made[1]: "abcd2222-0000-4000-8000-000000000000"})
        assert client.resolve("abcd1") == "abcd1111-0000-4000-8000-000000000000"
        assert client.resolve(made[2][:6]) == made[2]
        assert client.resolve(made[2]) == made[2]
        with pytest.raises(AmbiguousTaskId) as several:
            client.resolve("abcd")
        assert several.value.count == 2 and sorted(several.value.candidates) == [
            "abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"]
        assert "abcd1111-0000-4000-8000-000000000000" in str(several.value)
        with pytest.raises(TaskNotFound, match="no task id starts with 'ffff'"):
            client.resolve("ffff")
        with pytest.raises(ClientError, match="at least 4 characters"):
            client.resolve("abc")
        # A whole id is taken as it is, found or not: `get` then says UNKNOWN.
        assert client.resolve("00000000-0000-4000-8000-000000000000") == "00000000-0000-4000-8000-000000000000"


def test_resolve_searches_by_hand_where_the_server_ignores_the_prefix() -> None:
    """The provider has no task_id_prefix: its list holds every task, and the client picks."""
    provider = Server()
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(150)]
    for page_no in (1, 2):
        rows = [{"task_id": task_id, "status": "SUCCEEDED", "model_name": "wan2.6-r2v", "gmt_create": 1}
                for task_id in ids[(page_no - 1) * 100:page_no * 100]]
        body = {"request_id": "r", "data": rows, "total": 150, "total_page": 2, "page_no": page_no, "page_size": 100}
        for prefix in ("0000008f", "0000000"):
            provider.serve(f"/api/v1/tasks?task_id_prefix={prefix}&page_no={page_no}&page_size=100",
                           json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with Client(provider.url(""), "sk-x") as client:
            assert client.resolve("0000008f") == ids[0x8F]  # on the second page
            with pytest.raises(AmbiguousTaskId) as several:
                client.resolve("0000000")
            assert several.value.count == 16 and len(several.value.candidates) == 5
    finally:
        provider.close()
