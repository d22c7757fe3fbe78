"""The official `dashscope` SDK, unchanged, against a ref2video server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http import HTTPStatus

import dashscope
import httpx
import pytest
from dashscope import VideoSynthesis

from tests.live import CHILD_PYTHONPATH, LiveServer, ref_url, seed_body


def refs() -> list[str]:
    return [ref_url("role1.mp4"), ref_url("object4.png")]


@pytest.fixture
def sdk(server: LiveServer) -> Iterator[LiveServer]:
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{server.url}/api/v1"
    yield server
    dashscope.base_http_api_url = saved


def test_async_call_fetch_and_wait(sdk: LiveServer) -> None:
    created = VideoSynthesis.async_call(
        model="wan2.6-r2v-flash", prompt="character1 and character2 steps=3 step_ms=50 refs=video,image",
        reference_urls=refs(), size="1280*720", duration=5, shot_type="multi", seed=7, watermark=False,
        api_key=sdk.key,
    )
    assert created.status_code == HTTPStatus.OK, created
    assert created.output.task_status == "PENDING"
    task_id = created.output.task_id

    fetched = VideoSynthesis.fetch(created, api_key=sdk.key)
    assert fetched.status_code == HTTPStatus.OK and fetched.output.task_id == task_id
    assert fetched.output.task_status in ("PENDING", "RUNNING", "SUCCEEDED")

    done = VideoSynthesis.wait(created, api_key=sdk.key)
    assert done.status_code == HTTPStatus.OK
    assert done.output.task_status == "SUCCEEDED"
    assert done.output.video_url.startswith(sdk.results_url)
    assert done.usage.video_count == 1 and done.usage["SR"] == 720 and done.usage["size"] == "1280*720"
    assert httpx.get(done.output.video_url).status_code == 200
    assert sdk.get(task_id)["output"]["seed"] == 7


def test_sdk_errors_carry_the_providers_codes(sdk: LiveServer) -> None:
    bad_key = VideoSynthesis.async_call(model="wan2.6-r2v-flash", prompt="x", reference_urls=refs(), api_key="r2v-a-b")
    assert bad_key.status_code == 401 and bad_key.code == "InvalidApiKey"
    bad_model = VideoSynthesis.async_call(model="wan9", prompt="x", reference_urls=refs(), api_key=sdk.key)
    assert bad_model.status_code == 404 and bad_model.code == "ModelNotFound"
    bad_size = VideoSynthesis.async_call(
        model="wan2.6-r2v", prompt="x", reference_urls=refs(), size="7*7", api_key=sdk.key
    )
    assert bad_size.status_code == 400 and bad_size.code == "InvalidParameter" and "parameters.size" in bad_size.message


def test_cancel_and_list(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{server.url}/api/v1"
    try:
        created = VideoSynthesis.async_call(
            model="wan2.6-r2v", prompt="character1", reference_urls=refs(), api_key=server.key
        )
        canceled = VideoSynthesis.cancel(created, api_key=server.key)
        assert canceled.status_code == HTTPStatus.OK
        assert VideoSynthesis.fetch(created, api_key=server.key).output.task_status == "CANCELED"
        again = VideoSynthesis.cancel(created, api_key=server.key)
        assert again.status_code == 400 and again.code == "UnsupportedOperation"
        VideoSynthesis.async_call(model="wan2.6-r2v-flash", prompt="character1", reference_urls=refs(),
                                  api_key=server.key)

        listed = VideoSynthesis.list(api_key=server.key, page_size=10, status="CANCELED")
        assert listed.status_code == HTTPStatus.OK
        assert listed.output["total"] == 1
        assert listed.output["data"][0]["task_id"] == created.output.task_id
        everything = VideoSynthesis.list(api_key=server.key, model_name="wan2.6-r2v-flash")
        assert everything.output["total"] == 1
    finally:
        dashscope.base_http_api_url = saved


def test_the_seed_documents_request_over_plain_http(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.url}/task/bailian/ref2video", json=seed_body(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.key}"},
    )
    assert r.status_code == 200
    task_id = r.json()["output"]["task_id"]
    deadline = time.monotonic() + 30
    while True:
        body = httpx.get(f"{server.url}/task/{task_id}", headers={"Authorization": f"Bearer {server.key}"}).json()
        if body["output"]["task_status"] not in ("PENDING", "RUNNING"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert body["output"]["task_status"] == "SUCCEEDED"
    assert body["usage"]["output_video_duration"] == 10 and body["usage"]["size"] == "1280*720"


SCRIPT = """
import json, sys
from dashscope import VideoSynthesis
key, url = sys.argv[1], sys.argv[2]
rsp = VideoSynthesis.call(model="wan2.6-r2v-flash", prompt="character1 steps=2 refs=image",
                          reference_urls=[url], size="1280*720", api_key=key)
print(json.dumps({"status": rsp.status_code, "task_status": rsp.output.task_status,
                  "video_url": rsp.output.video_url}))
"""


def test_the_sdk_finds_the_server_through_DASHSCOPE_HTTP_BASE_URL(server: LiveServer) -> None:
    env = {**os.environ, "DASHSCOPE_HTTP_BASE_URL": f"{server.url}/api/v1", "PYTHONPATH": CHILD_PYTHONPATH}
    done = subprocess.run([sys.executable, "-c", SCRIPT, server.key, ref_url("a.png")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["task_status"] == "SUCCEEDED"
    assert result["video_url"].startswith(server.results_url)
