"""The default engine through the HTTP API: the seed document's request becomes a real video."""

from __future__ import annotations

import io

import av
import httpx

from tests.live import LiveServer, make_body, seed_body


def test_the_seed_request_renders_a_preview(make_server) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(models={"wan2.6-r2v-flash": "preview", "wan2.6-r2v": "preview"})
    body = server.wait(server.create(seed_body()), timeout=240)
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", out
    assert out["engine"] == "preview"
    assert body["usage"] == {"duration": 15, "input_video_duration": 5, "output_video_duration": 10,
                             "video_count": 1, "SR": 720, "size": "1280*720", "audio": True}
    video = httpx.get(out["video_url"], timeout=60)
    assert video.status_code == 200
    with av.open(io.BytesIO(video.content)) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720) and stream.average_rate == 30
        assert sum(1 for _ in c.decode(video=0)) == 300
        c.seek(0)
        samples = sum(f.samples for f in c.decode(audio=0))
        assert abs(samples / 48000 - 10.0) < 0.1


def test_a_running_preview_canceled_ends_canceled_with_no_video(make_server) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(models={"wan2.6-r2v-flash": "preview"})
    task_id = server.create(make_body(size="1920*1080", duration=10))  # 300 frames: seconds of drawing
    while not server.get(task_id)["output"].get("progress"):  # drawing has begun
        assert server.get(task_id)["output"]["task_status"] in ("PENDING", "RUNNING")
    assert server.client().post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    body = server.wait(task_id, timeout=120)
    out = body["output"]
    assert out["task_status"] == "CANCELED" and out["engine"] == "preview", out
    assert "video_url" not in out and "usage" not in body
    assert not [item for item in server.service.storage.listing() if item.name.endswith(".mp4")]
