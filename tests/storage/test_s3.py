"""S3Storage against a real S3-compatible server (moto's, in its own process): the Storage
interface, unfinished multipart uploads as partials, Range answers, presigned links, and a
bucket that is down or slow (StorageUnavailable within the bounded timeouts, never a hang)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from ref2video.errors import NotFound
from ref2video.storage.base import StorageUnavailable
from ref2video.storage.s3 import PARTIAL_GRACE_SECONDS, S3Partial, S3Storage, make_client
from tests.s3_server import S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def storage(s3: S3Server, tmp_path: Path) -> S3Storage:
    return S3Storage(s3.client(), s3.bucket(), prefix="results/", cache_dir=tmp_path / "cache")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return path


def request(method: str = "GET", range_header: str | None = None) -> Request:
    headers = [(b"range", range_header.encode())] if range_header else []
    return Request({"type": "http", "method": method, "headers": headers, "path": "/", "query_string": b""})


def _drain(response: Any) -> list[bytes]:
    import anyio

    async def collect() -> list[bytes]:
        return [chunk async for chunk in response.body_iterator]

    return anyio.run(collect)


def test_put_exists_local_path_delete(storage: S3Storage, source: Path) -> None:
    assert not storage.exists("a.mp4") and storage.local_path("a.mp4") is None
    storage.put("a.mp4", source)
    assert storage.exists("a.mp4")
    local = storage.local_path("a.mp4")
    assert local is not None and local.read_bytes() == source.read_bytes()
    assert storage.local_path("a.mp4") == local  # the cached copy is reused
    storage.delete("a.mp4")
    storage.delete("a.mp4")  # already gone: no error
    assert not storage.exists("a.mp4") and storage.local_path("a.mp4") is None
    with pytest.raises(NotFound):
        storage.put("../escape.mp4", source)


def test_partial_downloads_a_kill_left_are_swept_past_the_grace(storage: S3Storage, source: Path) -> None:
    """A process killed mid-download leaves `.<key>.<random>.partial` in the cache; the next
    download's trim removes those older than the grace and leaves a young one (a live
    download) alone."""
    storage.cache_dir.mkdir(parents=True)
    old, young = storage.cache_dir / ".a.mp4.0badc0de.partial", storage.cache_dir / ".b.mp4.1badc0de.partial"
    for partial in (old, young):
        partial.write_bytes(b"half")
    past = time.time() - PARTIAL_GRACE_SECONDS - 60
    os.utime(old, (past, past))
    storage.put("c.mp4", source)
    assert storage.local_path("c.mp4") is not None
    assert not old.exists() and young.exists()


def test_a_download_larger_than_the_bound_is_refused(s3: S3Server, tmp_path: Path, source: Path) -> None:
    storage = S3Storage(s3.client(), s3.bucket(), cache_dir=tmp_path / "c", max_download_bytes=100)
    storage.put("big.mp4", source)
    with pytest.raises(StorageUnavailable):
        storage.local_path("big.mp4")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_the_listing_reports_objects_and_unfinished_multipart_uploads(storage: S3Storage, s3: S3Server,
                                                                     source: Path) -> None:
    storage.put("a.mp4", source)
    other = S3Storage(storage.client, storage.bucket, prefix="uploads/", cache_dir=storage.cache_dir)
    other.put("u.png", source)  # another prefix: never in this storage's listing
    started = storage.client.create_multipart_upload(Bucket=storage.bucket, Key="results/cut.mp4")
    storage.client.upload_part(Bucket=storage.bucket, Key="results/cut.mp4", PartNumber=1,
                               UploadId=started["UploadId"], Body=b"x" * 100)
    listed = sorted(storage.listing(), key=lambda item: (item.partial, item.name))
    assert [(item.name, item.partial) for item in listed] == [("a.mp4", False), ("cut.mp4", True)]
    assert abs(listed[0].modified - time.time()) < 300
    partial = listed[1]
    assert isinstance(partial, S3Partial) and partial.upload_id == started["UploadId"]
    assert not storage.exists("cut.mp4")  # an unfinished upload is never readable by key
    storage.discard(partial)
    storage.discard(partial)  # already gone: no error
    storage.discard(listed[0])
    assert list(storage.listing()) == []
    assert [item.name for item in other.listing()] == ["u.png"]


def test_answers_honour_range_requests(storage: S3Storage, source: Path) -> None:
    storage.put("a.mp4", source)
    whole = source.read_bytes()
    full = storage.response("a.mp4", request())
    assert full.status_code == 200 and int(full.headers["content-length"]) == len(whole)
    assert b"".join(_drain(full)) == whole
    part = storage.response("a.mp4", request(range_header="bytes=100-199"))
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert b"".join(_drain(part)) == whole[100:200]
    tail = storage.response("a.mp4", request(range_header="bytes=-50"))
    assert tail.status_code == 206 and b"".join(_drain(tail)) == whole[-50:]
    junk = storage.response("a.mp4", request(range_header="bytes=abc"))
    assert junk.status_code == 200  # a Range header it cannot read is ignored, as locally
    past = storage.response("a.mp4", request(range_header=f"bytes={len(whole) + 10}-"))
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"
    head = storage.response("a.mp4", request("HEAD"))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole)
    with pytest.raises(NotFound):
        storage.response("missing.mp4", request())


def test_a_presigned_link_reads_the_object_straight_from_the_bucket(storage: S3Storage, source: Path) -> None:
    storage.put("a.mp4", source)
    url = storage.presign("a.mp4", 60)
    assert "X-Amz-Expires=60" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == source.read_bytes()
    # (moto does not check presigned signatures, so a tampered link is not tested here)


def test_presigned_links_are_reused_briefly_and_always_valid_at_least_the_ttl(storage: S3Storage, source: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import parse_qs, urlsplit

    from ref2video.storage.s3 import PresignedLinks

    storage.put("a.mp4", source)
    signed: list[int] = []
    presign = storage.presign
    monkeypatch.setattr(storage, "presign", lambda key, ttl: signed.append(ttl) or presign(key, ttl))
    now = [1000.0]
    links = PresignedLinks("secret", 3600, storage, clock=lambda: now[0])
    first = links.sign("http://api", "a.mp4")
    assert parse_qs(urlsplit(first).query)["X-Amz-Expires"] == ["3660"]  # ttl + the 60 s it may be reused
    now[0] += 60
    assert links.sign("http://api", "a.mp4") == first and signed == [3660]  # still valid 3600 s from here
    now[0] += 0.5
    links.sign("http://api", "a.mp4")
    assert signed == [3660, 3660]  # past the reuse: signed afresh
    assert httpx.get(first).content == source.read_bytes()
    short = PresignedLinks("secret", 30, storage)
    short.sign("http://api", "a.mp4")
    assert signed[-1] == 33  # a tenth of a short ttl
    never = PresignedLinks("secret", 7 * 86400, storage)
    never.sign("http://api", "a.mp4")
    never.sign("http://api", "a.mp4")
    assert signed[-2:] == [7 * 86400, 7 * 86400]  # at S3's longest a link cannot be reused


def refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections and never answers: a bucket that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    listener.close()


@pytest.mark.parametrize("kind", ["down", "slow"])
def test_a_bucket_down_or_slow_is_storage_unavailable_within_the_timeouts(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, source: Path
) -> None:
    port = refusing_port() if kind == "down" else request.getfixturevalue("silent_port")
    client = make_client(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="k", secret_access_key="s",
                         connect_timeout=0.25, read_timeout=0.25, max_attempts=2)
    storage = S3Storage(client, "bucket", cache_dir=tmp_path / "c")
    # The silent port never answers: only the client's timeouts can end a call there (a hang
    # fails the test by pytest's timeout).
    for call in (lambda: storage.put("a.mp4", source), lambda: storage.exists("a.mp4"),
                 lambda: storage.local_path("a.mp4"), lambda: storage.delete("a.mp4"),
                 lambda: list(storage.listing()), lambda: storage.response("a.mp4", globals()["request"]())):
        with pytest.raises(StorageUnavailable):
            call()
