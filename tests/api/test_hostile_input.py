"""Bad input is a 4xx in the provider's envelope, never a 500; a 500 that does happen is answered
once and keeps the connection; a database that is away is a 503 with Retry-After."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from ref2video.app import tasks as app_tasks
from ref2video.storage.base import StorageUnavailable
from ref2video.storage.local import LocalStorage
from ref2video.store.db import unavailable
from tests.live import API_LINKS, LiveServer, make_body, ref_url, settings_for, start_server
from tests.tcp_proxy import TcpProxy

GATEWAY = "/task/bailian/ref2video"
NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"


def post_raw(server: LiveServer, path: str, raw: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-DashScope-Async": "enable"}
    return server.client().post(path, content=raw, headers=headers)


def assert_envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"request_id", "code", "message"} and body["code"] == code, body
    return body


@pytest.mark.parametrize("path", [GATEWAY, NATIVE])
def test_a_deeply_nested_body_is_a_400(make_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    body = assert_envelope(post_raw(server, path, b"[" * 100_000 + b"]" * 100_000), 400, "InvalidParameter")
    assert "nested too deeply" in body["message"]


def test_a_number_of_thousands_of_digits_is_a_400(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    raw = json.dumps(make_body()).replace('"duration": 5', '"duration": ' + "9" * 5000).encode()
    assert_envelope(post_raw(server, GATEWAY, raw), 400, "InvalidParameter")


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800", "\\udfff"])
@pytest.mark.parametrize("where", ["prompt", "oss"])
@pytest.mark.parametrize("path", [GATEWAY, NATIVE])
def test_text_that_is_not_text_is_refused_at_create(make_server, escape: str, where: str, path: str) -> None:  # type: ignore[no-untyped-def]
    """A lone surrogate in a prompt was accepted once, and the task could then never be read;
    a NUL in an oss:// key reached PostgreSQL, which cannot store it."""
    server = make_server(workers=0)
    body = make_body(prompt="character1 PROMPT", urls=["oss://ref2video-uploads/x/KEY.png"])
    raw = json.dumps(body).replace("PROMPT" if where == "prompt" else "KEY", escape).encode()
    error = assert_envelope(post_raw(server, path, raw), 400, "InvalidParameter")
    assert "not text" in error["message"]
    assert server.client().get("/api/v1/tasks").json()["total"] == 0


def test_digits_that_are_not_ascii_or_too_many(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    client = server.client()
    for value in ("²", "٣", "1" * 5000):
        body = assert_envelope(client.get("/api/v1/tasks", params={"page_no": value}), 400, "InvalidParameter")
        assert len(body["message"]) < 200  # a huge parameter is not echoed back whole
    task_id = server.create()
    for expires in ("²", "9" * 5000):
        r = httpx.get(f"{server.url}/v1/results/{task_id}.mp4", params={"expires": expires, "sig": "x"})
        assert_envelope(r, 403, "AccessDenied")


def test_a_result_link_with_a_non_ascii_signature_is_refused(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(**API_LINKS)
    task_id = server.create()
    url = server.wait(task_id)["output"]["video_url"]
    forged = url.rsplit("sig=", 1)[0] + "sig=é" + "0" * 63
    assert_envelope(httpx.get(forged), 403, "AccessDenied")


def test_nul_characters_in_ids_and_filters(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    client = server.client()
    r = client.get("/api/v1/tasks/abc%00def")
    assert r.status_code == 200 and r.json()["output"]["task_status"] == "UNKNOWN"
    assert client.get("/task/%00").json()["output"]["task_status"] == "UNKNOWN"
    assert_envelope(client.post("/api/v1/tasks/a%00b/cancel"), 400, "UnsupportedOperation")
    assert_envelope(client.get("/api/v1/tasks", params={"model_name": "wan\x00"}), 400, "InvalidParameter")


def test_an_unexpected_error_is_answered_once_and_keeps_the_connection(
        make_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    task_id = server.create()

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_tasks, "get", broken)
    caplog.set_level(logging.ERROR)
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        request = (f"GET /api/v1/tasks/{task_id} HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {server.key}\r\n\r\n").encode()
        answers = []
        for _ in range(2):  # the same connection serves the second request too
            sock.sendall(request)
            answers.append(read_answer(sock))
    for status, headers, body in answers:
        assert status == 500 and headers.get("connection") != "close"
        assert json.loads(body)["code"] == "InternalError"
    rids = [json.loads(body)["request_id"] for _, _, body in answers]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2 and all(rid in r.getMessage() for rid, r in zip(rids, tracebacks))


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest[:length]


@pytest.mark.postgres
def test_a_database_outage_is_a_503_that_clients_retry(tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL out of reach (the link to it cut): creates and queries answer 503
    ServiceUnavailable with Retry-After, not 500; when it is back, everything works again."""
    proxy = TcpProxy("127.0.0.1", 5432)
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    server = start_server(settings_for(tmp_path / "data", url, workers=0))
    try:
        task_id = server.create()
        proxy.cut()
        client = server.client()
        for r in (client.post(GATEWAY, json=make_body()), client.get(f"/api/v1/tasks/{task_id}"),
                  client.get("/api/v1/tasks")):
            assert_envelope(r, 503, "ServiceUnavailable")
            assert int(r.headers["retry-after"]) > 0
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["database"] == "unreachable"
        proxy.restore()
        assert server.get(task_id)["output"]["task_status"] == "PENDING"
        assert client.post(GATEWAY, json=make_body()).status_code == 200
        assert client.get("/health").json()["database"] == "ok"
    finally:
        server.stop()
        proxy.close()


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 16 MB file system of its own (tmpfs): a skip where mounting is not allowed, a failure
    in CI (as PostgreSQL's absence is), where the full-disk promises must be shown."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        why = f"cannot mount a small file system here: {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run as root (or with CAP_SYS_ADMIN) to show the full-disk promises")
        pytest.skip(why)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last block; unbuffered, so closing the file has nothing left to write."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            os.fsync(f.fileno())
    return filler


def test_an_upload_to_a_full_disk_is_a_503_and_leaves_nothing(tmp_path: Path, tiny_disk: Path) -> None:
    """The files' side of a full disk (the database is elsewhere): an upload's scratch copy or
    its stored file cannot be written. It was a 500."""
    server = start_server(settings_for(tiny_disk / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", workers=0))
    try:
        client = server.client()
        files = {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"x" * 200_000, "image/png")}
        filler = fill(tiny_disk)
        r = client.post("/api/v1/uploads", files=files)
        assert_envelope(r, 503, "ServiceUnavailable")
        assert int(r.headers["retry-after"]) > 0
        scratch = server.service.settings.scratch_dir
        assert not [p for p in scratch.rglob("*") if p.is_file()]
        assert not list(server.service.uploads.listing())
        filler.unlink()
        assert client.post("/api/v1/uploads", files=files).status_code == 200
    finally:
        server.stop()


def test_a_local_put_to_a_full_disk_is_storage_unavailable(tmp_path: Path, tiny_disk: Path) -> None:
    """A worker storing a result on a full disk retries the task later (StorageUnavailable)."""
    storage = LocalStorage(tiny_disk / "results")
    source = tmp_path / "video.mp4"
    source.write_bytes(b"v" * 1_000_000)
    fill(tiny_disk)
    with pytest.raises(StorageUnavailable, match="disk is full"):
        storage.put("t.mp4", source)
    assert not list(storage.listing())  # no partial file left behind


def test_a_full_disk_is_a_503_and_health_says_so(tmp_path: Path, tiny_disk: Path) -> None:
    server = start_server(settings_for(tmp_path / "data", f"sqlite:///{tiny_disk / 'db.sqlite'}", workers=0))
    try:
        client = server.client()
        assert client.get("/health").json()["database"] == "ok"
        filler = fill(tiny_disk)
        r = client.post(GATEWAY, json=make_body(prompt="character1 " + "x" * 1400))
        assert_envelope(r, 503, "ServiceUnavailable")
        assert r.headers["retry-after"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["database"] == "not writable"
        filler.unlink()
        assert client.post(GATEWAY, json=make_body()).status_code == 200
        assert client.get("/health").status_code == 200
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_huge_parameters_are_cut_in_messages(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    client = server.client()
    for params in ({"status": "X" * 50_000}, {"start_time": "1" * 50_000}, {"page_size": "9" * 50_000}):
        body = assert_envelope(client.get("/api/v1/tasks", params=params), 400, "InvalidParameter")
        assert len(body["message"]) < 300
    body = assert_envelope(client.post(GATEWAY, json={**make_body(), "model": "m" * 50_000}), 404, "ModelNotFound")
    assert len(body["message"]) < 300
    assert ref_url("a.png")  # the reference server stays up for the suite


def test_a_range_header_that_cannot_be_read_is_ignored(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(**API_LINKS)
    url = server.wait(server.create())["output"]["video_url"]
    whole = httpx.get(url).content
    for value in ("bytes=abc", "bytes=5-2", "items=0-1"):
        r = httpx.get(url, headers={"Range": value})
        assert (r.status_code, r.headers["content-type"], r.content) == (200, "video/mp4", whole)
    past = httpx.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"


def sqlite_error(url: str, *statements: str) -> BaseException:
    """The error SQLAlchemy raises when SQLite runs `statements` at `url` (a real one, not made up)."""
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": 0})
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except sqlalchemy.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statements} ran without an error")


def test_sqlite_locked_or_unopenable_counts_as_away_and_a_bad_statement_does_not(tmp_path: Path) -> None:
    """What `unavailable` (the guard's 503 or 500) makes of SQLite's own errors."""
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        locked = sqlite_error(f"sqlite:///{path}", "INSERT INTO t VALUES (1)")
        assert "database is locked" in str(locked) and unavailable(locked)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    unopenable = sqlite_error(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite'}", "SELECT 1")
    assert "unable to open" in str(unopenable) and unavailable(unopenable)
    readonly = sqlite_error(f"sqlite:///file:{path}?mode=ro&uri=true", "INSERT INTO t VALUES (1)")
    assert "readonly" in str(readonly) and unavailable(readonly)
    for bug in ("SELECT * FROM no_such_table", "SELEKT 1"):
        assert not unavailable(sqlite_error(f"sqlite:///{path}", bug))


def test_sqlite_locked_past_its_busy_timeout_is_a_503(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock longer than the busy timeout (lowered here from
    30 s): a create is a 503 that clients retry, and succeeds once the lock is let go."""
    path = tmp_path / "db.sqlite"
    server = start_server(settings_for(tmp_path / "data", f"sqlite:///{path}", workers=0))
    try:
        sqlalchemy.event.listen(server.service.db, "connect",
                                lambda conn, _record: conn.execute("PRAGMA busy_timeout=50"))
        server.service.db.dispose()  # its pooled connections had 30 s
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            r = server.client().post(GATEWAY, json=make_body())
            assert_envelope(r, 503, "ServiceUnavailable")
            assert int(r.headers["retry-after"]) > 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert server.client().post(GATEWAY, json=make_body()).status_code == 200
    finally:
        server.stop()
