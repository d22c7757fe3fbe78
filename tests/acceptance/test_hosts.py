"""Hosts that share nothing but PostgreSQL and a bucket: two API processes (`serve --workers 0`)
and two worker processes (`ref2video worker`), each with a data folder of its own. A video made
by either worker is served by either API process, and the workers' scratch is cleaned."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

from ref2video.app import keys
from ref2video.store.db import make_engine, migrate
from tests.live import free_port, make_body
from tests.s3_server import S3Server

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server.start()
    yield server
    server.stop()


def s3_env(s3: S3Server, bucket: str, **extra: object) -> dict[str, object]:
    return {**s3.settings(bucket), **extra}


def decode(content: bytes) -> tuple[int, int, float]:
    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = float(stream.average_rate or stream.guessed_rate or 10)
        return stream.codec_context.width, stream.codec_context.height, frames / rate


@pytest.mark.parametrize("private", [True, False], ids=["through-the-api", "presigned"])
def test_two_api_hosts_serve_what_two_worker_hosts_made(tmp_path: Path, pg_url: str, s3: S3Server,
                                                        private: bool) -> None:
    db = make_engine(pg_url)
    migrate(db)  # once, before the processes start (as a deployment's upgrade step does)
    key, _ = keys.create_key(db, owner="default", name="test")
    bucket = s3.bucket()
    procs = []
    try:
        apis = []
        for i in range(2):
            port = free_port()
            env = env_for(tmp_path / f"api{i}", pg_url, **s3_env(s3, bucket, s3_private=private, port=port))
            proc = spawn(["serve", "--workers", "0"], env, tmp_path / f"api{i}.log")
            procs.append(proc)
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            apis.append(f"http://127.0.0.1:{port}")
        worker_dirs = [tmp_path / f"worker{i}" for i in range(2)]
        for i, data_dir in enumerate(worker_dirs):
            env = env_for(data_dir, pg_url, **s3_env(s3, bucket, workers=2, lease_seconds=5))
            procs.append(spawn(["worker"], env, tmp_path / f"worker{i}.log"))
        headers = {"Authorization": f"Bearer {key}"}
        ids = []
        for i in range(6):  # created through both API hosts
            r = httpx.post(f"{apis[i % 2]}/task/bailian/ref2video", headers=headers,
                           json=make_body(prompt="character1 waves steps=2 step_ms=50"), timeout=30)
            assert r.status_code == 200, r.text
            ids.append(r.json()["output"]["task_id"])
        for task_id in ids:
            for api in apis:  # each task, as each API host answers it
                out = _wait(api, task_id, headers, procs)
                assert out["task_status"] == "SUCCEEDED", out
                url = out["video_url"]
                if private:
                    assert url.startswith(api + "/v1/results/")
                else:
                    assert url.startswith(s3.url + f"/{bucket}/results/")
                r = httpx.get(url, timeout=30)
                assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
                width, height, seconds = decode(r.content)
                assert (width, height) == (64, 48) and abs(seconds - 1.0) < 0.2
        for data_dir in worker_dirs:  # scratch is local and cleaned; results never touch the disk
            scratch = data_dir / "scratch"
            leftovers = [p for p in scratch.iterdir() if p.name != "s3"] if scratch.exists() else []
            assert leftovers == []
            assert not list((data_dir / "results").glob("*.mp4")) if (data_dir / "results").exists() else True
    finally:
        for proc in procs:
            stop(proc)
        db.dispose()


def _wait(api: str, task_id: str, headers: dict[str, str], procs: list) -> dict:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + 120
    while True:
        r = httpx.get(f"{api}/api/v1/tasks/{task_id}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        out: dict = r.json()["output"]  # type: ignore[type-arg]
        if out["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED"):
            return out
        assert time.monotonic() < deadline, out
        assert all(p.poll() is None for p in procs), "a process exited"
        time.sleep(0.1)
