"""A whole server on `storage = "s3"` against moto's server: results served by presigned links or
through the API (private bucket), uploads resolved from the bucket for a worker, the sweeps
deleting from it, and a bucket that goes away (503 for a result, a task retried then failed
with `StorageUnavailable`), always within the bounded timeouts."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import httpx
import pytest
from sqlalchemy import update

from ref2video.storage.s3 import PresignedLinks, S3Storage
from ref2video.store.models import Task
from tests.api.test_uploads import png_bytes
from tests.live import LiveServer, make_body
from tests.s3_server import S3Server
from tests.tcp_proxy import TcpProxy


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[TcpProxy]:
    """The way to the bucket, which a test can cut."""
    cut = TcpProxy(s3.host, s3.port)
    yield cut
    cut.close()


@pytest.fixture
def on_s3(make_server: Callable[..., LiveServer], s3: S3Server, proxy: TcpProxy) -> Callable[..., LiveServer]:
    def make(**overrides: Any) -> LiveServer:
        bucket = overrides.pop("bucket", None) or s3.bucket()
        settings = s3.settings(bucket, url=f"http://127.0.0.1:{proxy.port}")
        return make_server(**{**settings, **overrides})
    return make


def objects(server: LiveServer, prefix: str) -> list[str]:
    storage = server.service.storage
    assert isinstance(storage, S3Storage)
    found = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in found)


def finished(server: LiveServer, **body: Any) -> dict[str, Any]:
    task_id = server.create(make_body(**body) if body else None)
    out: dict[str, Any] = server.wait(task_id)["output"]
    assert out["task_status"] == "SUCCEEDED", out
    return out


def test_a_video_is_served_by_a_presigned_link_straight_from_the_bucket(on_s3: Callable[..., LiveServer]) -> None:
    server = on_s3()
    out = finished(server)
    url = out["video_url"]
    # Signed for the TTL plus the window in which the same link is handed out again.
    links = server.service.signer
    assert isinstance(links, PresignedLinks)
    assert "X-Amz-Signature=" in url and f"X-Amz-Expires={math.ceil(links.ttl_seconds + links.reuse)}" in url
    r = httpx.get(url)
    assert r.status_code == 200
    with av.open(io.BytesIO(r.content)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert objects(server, "results/") == [f"results/{url.split('/results/')[1].split('?')[0]}"]
    assert not list((server.service.settings.data_dir / "results").glob("*.mp4"))  # nothing on local disk


def test_a_private_bucket_is_served_through_the_api_with_ranges(on_s3: Callable[..., LiveServer]) -> None:
    server = on_s3(s3_private=True)
    url = finished(server)["video_url"]
    assert url.startswith(server.url + "/v1/results/")
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)


def test_a_result_the_api_cannot_reach_is_a_503_not_a_hang(on_s3: Callable[..., LiveServer],
                                                          proxy: TcpProxy) -> None:
    server = on_s3(s3_private=True)
    url = finished(server)["video_url"]
    proxy.cut()
    # The server's S3 calls are bounded (2 tries, 2 s to connect, 5 s to read); this client waits
    # far longer than that, so a server that hangs fails the test with a ReadTimeout.
    r = httpx.get(url, timeout=60)
    assert r.status_code == 503 and r.json()["code"] == "ServiceUnavailable", r.text
    proxy.restore()
    assert httpx.get(url).status_code == 200


def test_uploads_resolve_from_the_bucket_for_the_worker(on_s3: Callable[..., LiveServer]) -> None:
    server = on_s3()
    r = server.client().post("/api/v1/uploads", files={"file": ("hero.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    url = r.json()["output"]["url"]
    assert len(objects(server, "uploads/")) == 1
    assert not list((server.service.settings.data_dir / "uploads").glob("*"))
    out = finished(server, urls=[url], prompt="character1 waves refs=image")
    assert out["video_url"]
    scratch = server.service.settings.scratch_dir
    assert not [p for p in scratch.rglob("*") if p.is_dir() and p.name.startswith(out["task_id"])]


def test_a_bucket_that_is_down_fails_the_task_with_a_clear_code(on_s3: Callable[..., LiveServer],
                                                                proxy: TcpProxy) -> None:
    server = on_s3(max_attempts=1)
    proxy.cut()
    task_id = server.create()
    out = server.wait(task_id, timeout=120)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "StorageUnavailable", out


def test_a_task_whose_bucket_comes_back_is_retried_and_succeeds(on_s3: Callable[..., LiveServer], proxy: TcpProxy,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ref2video.queue.worker.STORAGE_RETRY_DELAY", 0.5)
    server = on_s3(max_attempts=3)
    proxy.cut()
    task_id = server.create()
    deadline = time.monotonic() + 120
    while True:  # the first attempt could not store its video and gave the task back
        with server.service.db.connect() as conn:
            row = conn.execute(Task.__table__.select().where(Task.id == task_id)).mappings().one()
        if row["attempt"] >= 1 and row["status"] == "PENDING":
            break
        assert time.monotonic() < deadline, dict(row)
        time.sleep(0.05)
    proxy.restore()
    out = server.wait(task_id, timeout=120)["output"]
    assert out["task_status"] == "SUCCEEDED"
    assert len(objects(server, "results/")) == 1


def test_the_sweeps_delete_from_the_bucket(on_s3: Callable[..., LiveServer]) -> None:
    server = on_s3(workers=1)
    old = finished(server)
    kept = finished(server)
    r = server.client().post("/api/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 200
    day_ago = int((time.time() - 25 * 3600) * 1000)
    with server.service.db.begin() as conn:
        conn.execute(update(Task).where(Task.id == old["task_id"]).values(submitted_at=day_ago, ended_at=day_ago))
    storage = server.service.storage
    assert isinstance(storage, S3Storage)
    storage.client.put_object(Bucket=storage.bucket, Key="results/nobodys.mp4", Body=b"x")
    assert len(objects(server, "results/")) == 3
    server.service.sweeper.orphan_grace_seconds = 0.0  # everything unnamed is past the grace now
    time.sleep(1.1)  # S3 keeps whole seconds: let the orphan be strictly older than now
    server.service.sweeper.sweep()
    assert objects(server, "results/") == [f"results/{kept['video_url'].split('/results/')[1].split('?')[0]}"]
    assert len(objects(server, "uploads/")) == 1  # named by its upload row, kept


def test_an_upload_the_bucket_cannot_take_is_a_503(on_s3: Callable[..., LiveServer], proxy: TcpProxy) -> None:
    server = on_s3(workers=0)
    proxy.cut()
    r = server.client().post("/api/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 503 and r.json()["code"] == "ServiceUnavailable", r.text
    proxy.restore()
    r = server.client().post("/api/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
