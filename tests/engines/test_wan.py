"""The wan engine through the whole service over HTTP, on a tiny random WanVACEPipeline built
here (nothing downloaded) and loaded by the production loader. Random weights check the
plumbing (sizes, frames, timing, sound, seeds, references, progress, cancel, shots), never
quality. Skipped when torch or diffusers is absent (`pip install -e '.[wan]'`)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from ref2video.engines.wan.mapping import (
    describe_characters,
    generation_size,
    native_frames,
    resample_indices,
    segment_lengths,
)
from tests.live import LiveServer, make_body, media_body, ref_url

MODEL = "wan2.6-r2v-flash"  # audio as asked (wan2.6-r2v always has sound)
SOUND = "wan2.6-r2v"
MEDIA = "wan2.7-r2v"  # the media form


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the engine, not the store, is under test here."""
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


# -- the mapping (no torch needed) --------------------------------------------------------


def test_character_names_become_words() -> None:
    assert describe_characters("character1 hands character2 a cup; Character3 waves") == (
        "the first character hands the second character a cup; the third character waves")
    assert describe_characters("角色1和角色2") == "第一个角色和第二个角色"


def test_generation_sizes_keep_the_aspect_at_the_trained_area_in_multiples_of_16() -> None:
    assert generation_size(1920, 1080, 832 * 480) == (848, 480)
    assert generation_size(1280, 720, 1280 * 720) == (1280, 720)
    assert generation_size(1080, 1920, 832 * 480) == (480, 848)
    assert generation_size(960, 960, 832 * 480) == (624, 624)
    for w, h in [(1920, 1080), (1632, 1248), (720, 1280)]:
        assert all(v % 16 == 0 for v in generation_size(w, h, 832 * 480))


def test_frames_are_4k_plus_1_at_16_fps_and_resampled_to_30() -> None:
    assert [native_frames(s) for s in (2, 5, 10)] == [33, 81, 161]
    assert all((n - 1) % 4 == 0 for n in (native_frames(s / 3) for s in range(1, 31)))
    picks = resample_indices(81, 150, 30)
    assert len(picks) == 150 and picks[0] == 0 and picks[-1] <= 80 and picks == sorted(picks)


def test_long_shots_continue_in_segments() -> None:
    assert segment_lengths(81, 81, 5) == [81]
    lengths = segment_lengths(161, 81, 5)
    assert lengths[0] == 81 and all((n - 1) % 4 == 0 and n <= 81 for n in lengths)
    assert sum(lengths) - 5 * (len(lengths) - 1) >= 161


def test_unsupported_speed_ups_are_configuration_errors_at_start_up(make_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="wan_cpu_offload"):
        make_server(models={MODEL: "wan"}, wan_model_dir="/nowhere", wan_device="cpu", wan_cpu_offload=True)


def test_a_folder_of_another_model_is_refused_with_a_clear_code(tmp_path: Path) -> None:
    from ref2video.engines.wan.engine import WanEngine, WanOptions
    from ref2video.errors import EngineError

    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    with pytest.raises(EngineError) as caught:
        WanEngine(WanOptions(model_dir=tmp_path, device="cpu")).load()
    assert caught.value.code == "ModelNotSupported" and "WanVACEPipeline" in caught.value.message
    with pytest.raises(EngineError) as caught:
        WanEngine(WanOptions(device="cpu")).load()
    assert caught.value.code == "ModelNotConfigured"


# -- the engine on a tiny random pipeline -------------------------------------------------


class Spy:
    """Wraps the loaded pipeline: records each call's arguments and steps, optionally slows steps."""

    def __init__(self, pipe: Any, step_delay: float = 0.0) -> None:
        self.pipe, self.step_delay = pipe, step_delay
        self.calls: list[dict[str, Any]] = []
        self.steps = 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        inner: Callable[..., Any] = kwargs["callback_on_step_end"]

        def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> Any:
            with self.lock:
                self.steps += 1
            if self.step_delay:
                time.sleep(self.step_delay)
            return inner(pipe, i, t, tensors)

        return self.pipe(**{**kwargs, "callback_on_step_end": callback})


def _server(make_server: Callable[..., LiveServer], wan_dir: Path, **overrides: Any) -> LiveServer:
    values: dict[str, Any] = dict(models={MODEL: "wan", SOUND: "wan"}, wan_model_dir=wan_dir, wan_device="cpu",
                                  wan_steps=2, wan_area="32*32", lease_seconds=30.0)
    values.update(overrides)
    return make_server(**values)


def _spy(server: LiveServer, step_delay: float = 0.0) -> Spy:
    engine: Any = server.service.registry.get(MODEL)  # loads it, as the worker would
    spy = Spy(engine._pipe if not isinstance(engine._pipe, Spy) else engine._pipe.pipe, step_delay)
    engine._pipe = spy
    return spy


def _run(server: LiveServer, model: str = MODEL, **parameters: Any) -> dict[str, Any]:
    body = server.wait(server.create(model=model, **parameters), timeout=240)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    assert body["output"]["engine"] == "wan"
    return body


def _decode(body: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    video = httpx.get(body["output"]["video_url"], timeout=60)
    assert video.status_code == 200
    with av.open(io.BytesIO(video.content)) as c:
        stream = c.streams.video[0]
        facts: dict[str, Any] = {"size": (stream.width, stream.height), "fps": stream.average_rate,
                                 "codec": stream.codec_context.name, "audio": bool(c.streams.audio)}
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        facts["frames"] = len(frames)
        if c.streams.audio:
            c.seek(0)
            facts["audio_seconds"] = sum(f.samples for f in c.decode(audio=0)) / 48000
    return facts, frames


def test_exact_size_frames_fps_and_sound_through_the_crop(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_server, wan_dir)
    spy = _spy(server)
    body = _run(server, SOUND, prompt="character1 says 'Hello there, friend.'", size="1920*1080", duration=2)
    facts, _ = _decode(body)
    assert facts["size"] == (1920, 1080) and facts["fps"] == 30 and facts["frames"] == 60
    assert facts["codec"] == "h264" and facts["audio"] and abs(facts["audio_seconds"] - 2.0) < 0.1
    call = spy.calls[0]
    assert (call["width"], call["height"]) == (48, 32)  # 32*32 of area, 16:9, multiples of 16
    assert call["num_frames"] == 33 and call["num_inference_steps"] == 2
    assert call["prompt"].startswith("the first character says")
    assert body["usage"]["output_video_duration"] == 2 and body["usage"]["audio"] is True


def test_no_sound_unless_asked_and_seeds_decide_the_frames(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_server, wan_dir)
    runs = [_decode(_run(server, prompt="character1 waves", size="960*960", duration=2, audio=False, seed=seed))
            for seed in (7, 7, 8)]
    for facts, _ in runs:
        assert not facts["audio"] and facts["size"] == (960, 960) and facts["frames"] == 60
    assert np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_references_reach_the_pipeline_in_order(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_server, wan_dir)
    spy = _spy(server)
    _run(server, prompt="character2 hands character1 a cup", urls=[ref_url("b.jpg"), ref_url("a.png"),
                                                                     ref_url("c.mp4")],
         size="1280*720", duration=2, audio=False)
    pictures = spy.calls[0]["reference_images"]
    assert [p.size for p in pictures[:2]] == [(400, 600), (320, 240)]  # character1 is b.jpg
    assert len(pictures) == 3 and pictures[2].mode == "RGB"  # the video gives a frame
    assert spy.calls[0]["prompt"] == "the second character hands the first character a cup"


def test_progress_advances_per_step_and_a_cancel_ends_it_within_a_step(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_server, wan_dir, wan_steps=12)
    spy = _spy(server, step_delay=0.5)
    task = server.create(model=MODEL, prompt="character1 waves", size="1280*720", duration=2, audio=False)
    seen: list[int] = []
    deadline = time.monotonic() + 240
    while len({p for p in seen if p > 0}) < 2:
        out = server.get(task)["output"]
        assert out["task_status"] in ("PENDING", "RUNNING"), out
        seen.append(out.get("progress") or 0)
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert seen == sorted(seen) and max(seen) < 100
    assert server.client().post(f"/api/v1/tasks/{task}/cancel").status_code == 200
    body = server.wait(task, timeout=120)
    assert body["output"]["task_status"] == "CANCELED", body
    assert spy.steps < 12  # stopped mid-run


def test_multi_shot_makes_one_segment_per_planned_shot(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from ref2video.engines.preview.plan import RefShape, make_plan
    from ref2video.engines.preview.script import read_prompt

    prompt = ("character1 walks into the kitchen. character2 looks up from the table. "
              "character1 says 'Good morning.' Then they both laugh.")
    server = _server(make_server, wan_dir)
    spy = _spy(server)
    facts, _ = _decode(_run(server, prompt=prompt, urls=[ref_url("a.png"), ref_url("b.jpg")], size="1280*720",
                            duration=4, audio=False, shot_type="multi", seed=3))
    shapes = [RefShape(1, "image", 320, 240), RefShape(2, "image", 400, 600)]
    plan = make_plan(read_prompt(prompt, 2, scene_hints={1: True, 2: False}), shapes, width=1280, height=720,
                     duration=4, shot_type="multi", seed=3)
    assert len(plan.shots) >= 2
    assert len(spy.calls) == len(plan.shots)
    assert [c["num_frames"] for c in spy.calls] == [native_frames(s.frames / 30) for s in plan.shots]
    assert len({c["generator"].initial_seed() for c in spy.calls}) == len(plan.shots)
    assert facts["frames"] == 120 and facts["size"] == (1280, 720)


def test_a_long_shot_continues_from_the_previous_segment(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_server, wan_dir, wan_segment_frames=25)
    spy = _spy(server)
    facts, _ = _decode(_run(server, prompt="character1 waves", size="1280*720", duration=3, audio=False))
    assert facts["frames"] == 90
    assert len(spy.calls) >= 2 and "video" not in spy.calls[0]
    later = spy.calls[1]
    assert len(later["video"]) == later["num_frames"] == len(later["mask"])
    assert later["mask"][0].getpixel((0, 0)) == 0 and later["mask"][-1].getpixel((0, 0)) == 255


def test_the_media_form_opens_on_its_first_frame_and_names_its_references(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """wan2.7-r2v: frame 0 of the first pass is the first frame, fitted to the output size and
    kept through VACE's mask; `Image N` names the references in the prompt the model reads."""
    server = _server(make_server, wan_dir, models={MODEL: "wan", MEDIA: "wan"})
    spy = _spy(server)
    body = media_body("Image 2 hands Image 1 a cup", [
        {"type": "reference_image", "url": ref_url("b.jpg")},
        {"type": "first_frame", "url": ref_url("tall.png")},  # 360x640, left red, right blue
        {"type": "reference_image", "url": ref_url("a.png")},
    ], resolution="720P", duration=2)
    done = server.wait(server.create(body), timeout=240)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    facts, _ = _decode(done)
    assert facts["size"] == (720, 1280) and facts["frames"] == 60  # 9:16, the first frame's ratio
    first = spy.calls[0]
    assert first["prompt"] == "the second character hands the first character a cup"
    assert [p.size for p in first["reference_images"]] == [(400, 600), (320, 240)]  # not the first frame
    width, height = first["width"], first["height"]
    assert (width, height) == generation_size(720, 1280, 32 * 32)
    video, mask = first["video"], first["mask"]
    assert len(video) == len(mask) == first["num_frames"]
    assert mask[0].getpixel((0, 0)) == 0 and {m.getpixel((0, 0)) for m in mask[1:]} == {255}
    opening = video[0]
    assert opening.size == (width, height)
    left, right = opening.getpixel((1, height // 2)), opening.getpixel((width - 2, height // 2))
    assert left[0] > 200 > left[2] and right[2] > 200 > right[0], (left, right)  # red | blue, as sent
    assert {f.getpixel((0, 0)) for f in video[1:]} == {(128, 128, 128)}  # the rest is generated


def test_missing_weights_fail_the_task_and_the_worker_lives_on(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(models={SOUND: "wan", MODEL: "preview"}, wan_model_dir=tmp_path / "none",
                         wan_device="cpu")
    body = server.wait(server.create(model=SOUND), timeout=60)
    assert body["output"]["task_status"] == "FAILED"
    assert body["output"]["code"] == "ModelNotFound" and "model_index.json" in body["output"]["message"]
    again = server.wait(server.create(make_body(model=MODEL, duration=2)), timeout=240)
    assert again["output"]["task_status"] == "SUCCEEDED"


@pytest.mark.gpu
def test_the_1_3b_architecture_runs_two_steps_at_480p_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from PIL import Image

    from ref2video.engines.wan.random_pipeline import VACE_1_3B, make_pipeline

    pipe = make_pipeline(VACE_1_3B, real_vae=True)
    pipe.transformer.to(torch.bfloat16)
    pipe.to("cuda:0")
    steps: list[int] = []
    frames = pipe(prompt="a cat", reference_images=[Image.new("RGB", (320, 240), "red")], height=480, width=832,
                  num_frames=81, num_inference_steps=2, output_type="np",
                  callback_on_step_end=lambda p, i, t, k: steps.append(i) or k).frames[0]
    assert frames.shape == (81, 480, 832, 3) and steps == [0, 1]
