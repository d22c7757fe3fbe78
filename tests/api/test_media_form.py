"""The media form of wan2.7-r2v (docs/protocol.md §3) over real HTTP: what it accepts, what it
refuses (naming the field), the usage it answers, the preview engine rendering it, and the
official SDK's 2.0 client, which sends this form, unchanged."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import dashscope.v2 as dashscope_v2
import httpx
import numpy as np
import pytest

from tests.http_server import Server
from tests.live import LiveServer, make_body, media_body, ref_url
from tests.media.media_files import make_video

NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"


def post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return server.client().post(NATIVE, json=body, headers={"X-DashScope-Async": "enable"})


def image(name: str = "a.png", **extra: Any) -> dict[str, Any]:
    return {"type": "reference_image", "url": ref_url(name), **extra}


def video(name: str = "c.mp4", **extra: Any) -> dict[str, Any]:
    return {"type": "reference_video", "url": ref_url(name), **extra}


def changed(body: dict[str, Any], **parts: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for path, value in parts.items():
        section, _, key = path.partition("__")
        body[section][key] = value
    return body



REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("an unknown type", {"input__media": [image(), {"type": "first_clip", "url": "https://x/a.mp4"}]},
     "input.media[1].type must be one of reference_image, reference_video, first_frame, not 'first_clip'"),
    ("the two forms at once", {"input__reference_urls": ["https://x/a.png"]},
     "input.media and input.reference_urls are two request forms; send one of them"),
    ("the deprecated videos field with it", {"input__reference_video_urls": ["https://x/a.mp4"]},
     "input.media and input.reference_video_urls are two request forms; send one of them"),
    ("the other form's size", {"parameters__size": "1280*720"}, "parameters.size belongs to the other request form"),
    ("a resolution it does not have", {"parameters__resolution": "4K"},
     "parameters.resolution must be one of 720P, 1080P"),
    ("a ratio it does not have", {"parameters__ratio": "21:9"}, "parameters.ratio must be one of 16:9"),
    ("more than 10 s with a video", {"input__media": [image(), video()], "parameters__duration": 12},
     "parameters.duration must be between 2 and 10, not 12 (input.media holds a reference_video)"),
    ("more than 15 s", {"parameters__duration": 16}, "parameters.duration must be between 2 and 15, not 16"),
    ("six references", {"input__media": [image()] * 6},
     "input.media must hold 1 to 5 reference_image and reference_video"),
    ("a first frame alone", {"input__media": [{"type": "first_frame", "url": "https://x/f.png"}]},
     "input.media must hold 1 to 5 reference_image and reference_video items, not 0"),
    ("two first frames", {"input__media": [image()] + [{"type": "first_frame", "url": "https://x/f.png"}] * 2},
     "input.media holds 2 first_frame items; at most 1"),
    ("a voice on the first frame", {"input__media": [image(), {"type": "first_frame", "url": "https://x/f.png",
                                                             "reference_voice": "https://x/v.mp3"}]},
     "input.media[1].reference_voice goes with a reference_image or reference_video"),
    ("media that is not a list", {"input__media": {"type": "reference_image"}}, "input.media must be an array"),
    ("an item that is not an object", {"input__media": ["https://x/a.png"]},
     "input.media[0] must be an object with type and url, not string"),
]


@pytest.mark.parametrize(("what", "parts", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_what_the_media_form_refuses(make_server, what: str, parts: dict[str, Any], message: str) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    r = post(server, changed(media_body(), **parts))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "InvalidParameter" and r.json()["message"].startswith(message), r.json()


def test_each_model_takes_its_own_form(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    urls_to_27 = make_body(model="wan2.7-r2v")
    r = post(server, urls_to_27)
    assert r.status_code == 400 and r.json()["message"].startswith("wan2.7-r2v takes input.media")
    media_to_26 = media_body(model="wan2.6-r2v-flash")
    r = post(server, media_to_26)
    assert r.status_code == 400 and "input.media is the request form of wan2.7-r2v" in r.json()["message"]
    for name, value in (("ratio", "16:9"), ("resolution", "720P")):
        r = post(server, changed(make_body(), **{f"parameters__{name}": value}))
        assert (r.status_code, r.json()["code"]) == (400, "InvalidParameter"), r.text
        assert r.json()["message"].startswith(f"parameters.{name} belongs to the other request form;"
                                              " with input.reference_urls give parameters.size"), r.json()
    r = post(server, changed(media_body(), input__media=[{"type": "reference_image", "url": "ftp://x/a.png"}]))
    assert (r.status_code, r.json()["code"]) == (400, "InvalidURL")
    assert r.json()["message"].startswith("input.media[0].url")


def test_a_media_task_runs_with_its_references_in_order_and_the_providers_usage(server: LiveServer) -> None:
    body = media_body("Image 1 hands Video 1 a cup refs=image,video steps=2", [image(), video()],
                      resolution="720P", ratio="9:16", duration=10)
    r = post(server, body)
    assert r.status_code == 200, r.text
    done = server.wait(r.json()["output"]["task_id"])
    assert done["output"]["task_status"] == "SUCCEEDED", done
    # As the provider reports wan2.7: the ratio where wan2.6 reports its size (and our `audio`).
    assert done["usage"] == {"duration": 12, "input_video_duration": 2, "output_video_duration": 10,
                             "video_count": 1, "SR": 720, "ratio": "9:16", "audio": True}


def test_the_prompt_is_cut_at_5000_characters(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    r = post(server, media_body("Image 1 waves. " + "x" * 6000))
    task = server.get(r.json()["output"]["task_id"])
    with server.service.db.connect() as conn:
        from sqlalchemy import select

        from ref2video.store.models import Task

        spec = conn.execute(select(Task.spec).where(Task.id == task["output"]["task_id"])).scalar_one()
    assert len(spec["prompt"]) == 5000


@pytest.mark.parametrize(("media", "where", "words"), [
    ([image("c.mp4")], "input.media[0]", "expected an image, got a MP4 video"),
    ([video("a.png")], "input.media[0]", "expected a video, got a PNG image"),
    ([image(reference_voice=ref_url("long-voice.mp3"))], "input.media[0].reference_voice",
     "the recording is 12 s long; a voice must be 1 to 10 s"),
    ([image(reference_voice=ref_url("a.png"))], "input.media[0].reference_voice",
     "expected a voice recording (WAV or MP3), got a PNG image"),
    ([image(), {"type": "first_frame", "url": ref_url("c.mp4")}], "input.media[1]", "expected an image"),
])
def test_files_that_break_the_media_forms_rules_fail_the_task(
        server: LiveServer, media: list[dict[str, Any]], where: str, words: str) -> None:
    r = post(server, media_body(media=media))
    out = server.wait(r.json()["output"]["task_id"])["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidParameter", out
    assert out["message"] == f"{where}: {words}" or out["message"].startswith(f"{where}: {words}"), out["message"]


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Videos the urls form takes and the media form does not: a side under 240 px, one over 4096."""
    root = tmp_path_factory.mktemp("odd-videos")
    server = Server()
    server.serve_file("/low.mp4", make_video(root / "low.mp4", 1, size=(320, 200)), "video/mp4")
    server.serve_file("/wide.mp4", make_video(root / "wide.mp4", 1, size=(4112, 240)), "video/mp4")
    yield server
    server.close()


@pytest.mark.parametrize(("name", "words"), [("low.mp4", "the video is 320x200 px, below 240 px per side"),
                                             ("wide.mp4", "the video is 4112x240 px, above 4096 px per side")])
def test_the_media_forms_videos_are_240_to_4096_px_per_side(server: LiveServer, odd_videos: Server, name: str,
                                                             words: str) -> None:
    url = odd_videos.url(f"/{name}")
    r = post(server, media_body("Video 1 waves", [{"type": "reference_video", "url": url}]))
    out = server.wait(r.json()["output"]["task_id"])["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidParameter", out
    assert out["message"] == f"input.media[0]: {words}", out["message"]
    urls_form = server.wait(server.create(make_body("character1 waves refs=video", urls=[url])))["output"]
    assert urls_form["task_status"] == "SUCCEEDED", urls_form  # the urls form allows 8000 px, no least side


def test_the_preview_engine_renders_the_media_form(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 9:16 first frame wins over the 16:9 ratio asked (the provider follows the frame), the
    video opens on it, and the character speaks; usage says the ratio it got."""
    server = make_server(models={"wan2.7-r2v": "preview"})
    body = media_body("Image 1 says: 'Hello there'", [image(reference_voice=ref_url("voice.wav")),
                                                     {"type": "first_frame", "url": ref_url("tall.png")}],
                      resolution="720P", ratio="16:9", duration=3)
    r = post(server, body)
    done = server.wait(r.json()["output"]["task_id"], timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    assert done["output"]["engine"] == "preview" and done["usage"]["ratio"] == "9:16"
    path = tmp_path / "out.mp4"
    path.write_bytes(httpx.get(done["output"]["video_url"]).content)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (720, 1280)
        assert stream.average_rate == 30 and container.streams.audio
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == 90
    # tall.png is red on its left half and blue on its right: the first frame shows it.
    left, right = frames[0][640, 180].astype(int), frames[0][640, 540].astype(int)
    assert left[0] > 150 and left[2] < 90 and right[2] > 150 and right[0] < 90, (left, right)
    assert np.abs(frames[30].astype(int) - frames[0].astype(int)).mean() > 10  # then the storyboard


def test_the_official_sdk_2_client_sends_the_media_form(server: LiveServer, tmp_path: Path) -> None:
    """dashscope 2.0's client, unchanged: a local file in `media` goes through getPolicy and
    the upload, then the create, the wait and the usage."""
    hero = tmp_path / "hero.png"
    hero.write_bytes(httpx.get(ref_url("a.png")).content)
    client = dashscope_v2.Client(api_key=server.key, base_url=f"{server.url}/api/v1")
    job = client.videos.jobs.create(
        model="wan2.7-r2v", prompt="Image 1 waves at Video 1 refs=image,video steps=2",
        media=[{"type": "reference_image", "url": str(hero)}, video()], resolution="720P", ratio="1:1", duration=4)
    assert job.status == "PENDING"
    done = client.videos.jobs.wait(job, timeout=60)
    assert done.status == "SUCCEEDED" and done.video_url.startswith(server.results_url)
    assert done.usage is not None and done.usage.model_extra["ratio"] == "1:1"
    assert done.usage.model_extra["output_video_duration"] == 4
