"""The preview engine end to end on the CPU: decoded output checked for size, frames, fps,
duration, sound, shots that show their references, cuts, determinism and cancel, and what
is drawn over the picture (the preview badge, captions, the speaker's outline, the mark)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from ref2video.config import Settings
from ref2video.engines.base import GenerationRequest
from ref2video.engines.preview.engine import PreviewEngine
from ref2video.engines.preview.plan import Plan, RefShape, make_plan
from ref2video.engines.preview.render import BADGE, PALETTE, WATERMARK, _Overlays, render
from ref2video.engines.preview.script import read_prompt
from ref2video.engines.registry import EngineRegistry
from ref2video.errors import TaskCanceled
from ref2video.media.probe import probe
from ref2video.media.reference import Reference
from ref2video.spec import TaskSpec
from tests.media.media_files import make_video

COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 80, 230), 4: (230, 200, 40)}


class Context:
    def __init__(self, cancel_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.cancel_at = cancel_at

    def report_step(self, step: int, total: int) -> None:
        self.steps.append(int(100 * step / total))

    def should_cancel(self) -> bool:
        return self.cancel_at is not None and len(self.steps) >= self.cancel_at

    def raise_if_canceled(self) -> None:
        if self.should_cancel():
            raise TaskCanceled()


def solid_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def solid_video(path: Path, colour: tuple[int, int, int], seconds: float = 2) -> Path:
    return make_video(path, seconds, size=(320, 480), audio=True, fps=30, colour=colour)


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[Reference]:
    root = tmp_path_factory.mktemp("refs")
    files = [
        solid_video(root / "r1.mp4", COLOURS[1]),
        solid_image(root / "r2.png", COLOURS[2], (400, 600)),
        solid_image(root / "r3.jpg", COLOURS[3], (500, 500)),
        solid_image(root / "r4.png", COLOURS[4], (1280, 720)),
    ]
    return [Reference.from_info(i, f.name, f, probe(f)) for i, f in enumerate(files, 1)]


@pytest.fixture(scope="module")
def engine() -> PreviewEngine:
    e = PreviewEngine()
    e.load()
    return e


PROMPT = ("Character1 walks into character4. Character1 says to Character2: 'Sounds good'. "
          "character2 and character3 dance.")


def generate(engine: PreviewEngine, refs: list[Reference], tmp: Path, context: Context | None = None, **params):  # type: ignore[no-untyped-def]
    spec = TaskSpec(model="wan2.6-r2v-flash", prompt=params.pop("prompt", PROMPT),
                    reference_urls=tuple(r.url for r in refs), **{"size": "1280*720", "duration": 4,
                                                                   "shot_type": "multi", "seed": 7, **params})
    tmp.mkdir(parents=True, exist_ok=True)
    request = GenerationRequest("t", spec, tmp, references=tuple(refs))
    return spec, engine.generate(request, context or Context())


def decode(path: Path) -> tuple[list[np.ndarray], av.container.InputContainer]:
    container = av.open(str(path))
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    container.seek(0)
    return frames, container


def the_plan(spec: TaskSpec, refs: list[Reference]):  # type: ignore[no-untyped-def]
    hints = {r.index: r.kind == "image" and r.width > r.height * 1.2 for r in refs}
    script = read_prompt(spec.prompt, len(refs), scene_hints=hints)
    shapes = [RefShape(r.index, r.kind, r.width, r.height) for r in refs]
    return make_plan(script, shapes, width=spec.width, height=spec.height, duration=spec.duration,
                     shot_type=spec.shot_type, seed=spec.seed)


def test_the_output_is_exactly_what_was_asked(engine: PreviewEngine, refs: list[Reference], tmp_path: Path) -> None:
    spec, result = generate(engine, refs, tmp_path)
    assert result.output_seconds == 4 and result.has_audio and result.input_video_seconds == pytest.approx(2, abs=0.1)
    with av.open(str(result.video_path)) as c:
        video = c.streams.video[0]
        assert (video.width, video.height) == (1280, 720)
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert video.average_rate == 30
        frames = sum(1 for _ in c.decode(video=0))
        assert frames == 120
        (audio,) = c.streams.audio
        assert audio.rate == 48000 and audio.channels == 2 and audio.codec_context.name == "aac"
        c.seek(0)
        samples = sum(f.samples for f in c.decode(audio=0))
        assert abs(samples / 48000 - 4.0) < 0.1
        assert c.duration is not None and abs(c.duration / 1e6 - 4.0) < 0.1
    # Fast start: the index (moov) comes before the media data (mdat).
    head = result.video_path.read_bytes()[:200_000]
    assert 0 <= head.find(b"moov") < head.find(b"mdat")


def test_a_silent_request_has_no_audio_stream(engine: PreviewEngine, refs: list[Reference], tmp_path: Path) -> None:
    _, result = generate(engine, refs, tmp_path, audio=False, duration=2)
    with av.open(str(result.video_path)) as c:
        assert not c.streams.audio
    assert result.has_audio is False


def test_each_shot_shows_the_references_its_plan_names(engine: PreviewEngine, refs: list[Reference],
                                                       tmp_path: Path) -> None:
    spec, result = generate(engine, refs, tmp_path)
    plan = the_plan(spec, refs)
    assert plan.scene == 4 and [s.characters for s in plan.shots] == [(1,), (1, 2), (2, 3)]
    frames, container = decode(result.video_path)
    container.close()
    for shot in plan.shots:
        middle = (shot.start + shot.end) // 2
        for character in shot.characters:
            box = shot.box_of(character, middle)
            inset = max(8, box.w // 8)
            rows = slice(box.y + inset, box.y + box.h - inset)
            region = frames[middle][rows, max(0, box.x + inset) : box.x + box.w - inset]
            mean = region.reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - COLOURS[character]).max() < 30, (shot, character, mean)


def test_cuts_match_the_plan_and_a_single_shot_has_none(engine: PreviewEngine, refs: list[Reference],
                                                       tmp_path: Path) -> None:
    def cuts(frames: list[np.ndarray]) -> list[int]:
        diffs = [np.abs(a.astype(np.int16) - b).mean() for a, b in zip(frames, frames[1:])]
        return [i + 1 for i, d in enumerate(diffs) if d > 12]

    spec, multi = generate(engine, refs, tmp_path / "multi")
    frames, c = decode(multi.video_path)
    c.close()
    assert cuts(frames) == the_plan(spec, refs).cuts
    _, single = generate(engine, refs, tmp_path / "single", shot_type="single")
    frames, c = decode(single.video_path)
    c.close()
    assert cuts(frames) == []


def test_same_seed_same_frames_other_seed_other_layout(engine: PreviewEngine, refs: list[Reference],
                                                       tmp_path: Path) -> None:
    def hashes(result) -> list[str]:  # type: ignore[no-untyped-def]
        frames, c = decode(result.video_path)
        c.close()
        return [hashlib.sha256(f.tobytes()).hexdigest() for f in frames]

    params = dict(duration=2, audio=False)
    a = hashes(generate(engine, refs, tmp_path / "a", **params)[1])
    b = hashes(generate(engine, refs, tmp_path / "b", **params)[1])
    c = hashes(generate(engine, refs, tmp_path / "c", seed=8, **params)[1])
    assert a == b and a != c


def test_watermark_and_subtitles_are_drawn(engine: PreviewEngine, refs: list[Reference], tmp_path: Path) -> None:
    spec, marked = generate(engine, refs, tmp_path / "w", watermark=True, duration=3)
    _, plain = generate(engine, refs, tmp_path / "p", watermark=False, duration=3)
    (fm, cm), (fp, cp) = decode(marked.video_path), decode(plain.video_path)
    cm.close()
    cp.close()
    corner = (slice(620, 720), slice(1080, 1280))
    assert np.abs(fm[0][corner].astype(int) - fp[0][corner]).mean() > 2
    # The mark is honest: a collage of the user's pictures is not "AI Generated".
    assert "ai generated" not in WATERMARK.lower() and "preview" in WATERMARK
    (mark,) = [o for o in _Overlays(the_plan(spec, refs), watermark=True).items if o.end == float("inf")
               and o.x > 640]
    text = (slice(mark.y, mark.y + mark.layer.rgb.shape[0]), slice(mark.x, mark.x + mark.layer.rgb.shape[1] // 3))
    assert all(np.abs(a[text].astype(int) - b[text]).mean() > 2 for a, b in zip(fm, fp))  # on every frame
    assert np.abs(fm[0][:600, :1000].astype(int) - fp[0][:600, :1000]).mean() < 1
    # The line "Sounds good" is on screen during its cue, in the band above the bottom.
    cue = the_plan(spec, refs).cues[0]
    during = int((cue.start + cue.end) / 2 * 30)
    band = (slice(560, 700), slice(300, 980))
    assert np.abs(fp[during][band].astype(int) - fp[max(0, int(cue.start * 30) - 3)][band]).mean() > 3


def test_progress_rises_and_cancel_stops_without_leaving_a_file(engine: PreviewEngine, refs: list[Reference],
                                                                tmp_path: Path) -> None:
    context = Context()
    generate(engine, refs, tmp_path / "ok", context=context, duration=2, audio=False)
    assert context.steps == sorted(context.steps) and context.steps[-1] >= 90 and len(context.steps) > 3
    stopping = Context(cancel_at=2)
    with pytest.raises(TaskCanceled):
        generate(engine, refs, tmp_path / "stop", context=stopping, duration=10)
    assert not list((tmp_path / "stop").glob("*.mp4"))


# -- what is drawn over the picture ------------------------------------------------------------

TALK = "Character2 says to Character3: 'We should go now'. Character1 and character2 wave."
BADGE_AREA = (slice(16, 48), slice(16, 200))  # top left, above every character's box
CAPTION_AREA = (slice(20, 46), slice(230, 420))  # beside the badge


def render_plan(plan: Plan, refs: list[Reference], path: Path, *, badge: bool = True) -> list[np.ndarray]:
    """`plan` through the renderer itself, silent and unmarked, decoded."""
    render(plan, {r.index: r for r in refs}, path, audio=None, watermark=False, on_frame=lambda i: None, badge=badge)
    frames, container = decode(path)
    container.close()
    return frames


def talk_plan(refs: list[Reference], **params) -> Plan:  # type: ignore[no-untyped-def]
    spec = TaskSpec(model="wan2.6-r2v-flash", prompt=params.pop("prompt", TALK),
                    reference_urls=tuple(r.url for r in refs),
                    **{"size": "1280*720", "duration": 2, "shot_type": "multi", "seed": 7, "audio": False, **params})
    return the_plan(spec, refs)


def uncaptioned(plan: Plan) -> Plan:
    return dataclasses.replace(plan, shots=tuple(dataclasses.replace(s, caption="") for s in plan.shots))


def test_the_preview_badge_is_on_every_frame_unless_turned_off(refs: list[Reference], tmp_path: Path) -> None:
    people = refs[:3]  # no scene: the generated backdrop is one colour along each row
    plan = uncaptioned(talk_plan(people))
    on = render_plan(plan, people, tmp_path / "on.mp4")
    off = render_plan(plan, people, tmp_path / "off.mp4", badge=False)
    assert len(on) == len(off) == plan.frames
    assert all(np.abs(a[BADGE_AREA].astype(int) - b[BADGE_AREA]).mean() > 10 for a, b in zip(on, off))

    # Off, nothing is drawn there: the backdrop's rows are flat; on, the badge's text is not.
    def spread(frame: np.ndarray) -> float:
        area = frame[BADGE_AREA].astype(int)
        return float(np.abs(area - np.median(area, axis=1, keepdims=True)).max())

    assert all(spread(f) < 12 for f in off) and all(spread(f) > 60 for f in on)
    assert BADGE == "PREVIEW · storyboard"


def test_the_badge_setting_reaches_the_engine(engine: PreviewEngine, refs: list[Reference], tmp_path: Path) -> None:
    assert engine.badge is True  # PreviewEngine() keeps the default
    assert Settings(data_dir=tmp_path).preview_badge is True
    registry = EngineRegistry.from_settings(Settings(data_dir=tmp_path, preview_badge=False))
    built = registry.get("wan2.6-r2v")
    assert isinstance(built, PreviewEngine) and built.badge is False
    people = refs[:3]
    _, marked = generate(engine, people, tmp_path / "on", prompt=TALK, duration=1, audio=False)
    _, bare = generate(built, people, tmp_path / "off", prompt=TALK, duration=1, audio=False)
    (fm, cm), (fb, cb) = decode(marked.video_path), decode(bare.video_path)
    cm.close()
    cb.close()
    assert all(np.abs(a[BADGE_AREA].astype(int) - b[BADGE_AREA]).mean() > 10 for a, b in zip(fm, fb))


def test_each_shot_shows_its_caption(refs: list[Reference], tmp_path: Path) -> None:
    people = refs[:3]
    plan = talk_plan(people)
    assert [s.caption for s in plan.shots] == ["Character2 says to Character3.", "Character1 and character2 wave."]
    captioned = render_plan(plan, people, tmp_path / "c.mp4")
    bare = render_plan(uncaptioned(plan), people, tmp_path / "b.mp4")
    for shot in plan.shots:
        for frame in (shot.start, shot.end - 1):
            a, b = captioned[frame].astype(int), bare[frame].astype(int)
            assert np.abs(a[CAPTION_AREA] - b[CAPTION_AREA]).mean() > 10, (shot, frame)
            assert np.abs(a[80:] - b[80:]).mean() < 1  # only the header row differs
    # Other words, other pixels: the two shots' captions differ where they are drawn.
    repeated = dataclasses.replace(plan.shots[1], caption=plan.shots[0].caption)
    swapped = dataclasses.replace(plan, shots=(plan.shots[0], repeated))
    same = render_plan(swapped, people, tmp_path / "s.mp4")
    last = plan.shots[1].end - 1
    assert np.abs(same[last][CAPTION_AREA].astype(int) - captioned[last][CAPTION_AREA]).mean() > 5


def test_the_speaker_is_outlined_in_their_colour_while_speaking(engine: PreviewEngine, refs: list[Reference],
                                                                tmp_path: Path) -> None:
    people = refs[:3]
    prompt = "Character2 says to Character3: 'We should go now, before it rains'."
    spec, result = generate(engine, people, tmp_path, prompt=prompt, shot_type="single", duration=4, audio=False)
    plan = the_plan(spec, people)
    (cue,) = plan.cues
    (shot,) = plan.shots
    assert cue.speaker == 2 and set(shot.characters) == {2, 3}
    frames, container = decode(result.video_path)
    container.close()

    def left_edge(frame: int, character: int) -> np.ndarray:
        """Mean colour of the band just left of the character's box, along its middle half."""
        box = shot.box_of(character, frame)
        band = frames[frame][box.y + box.h // 4 : box.y + 3 * box.h // 4, box.x - 4 : box.x - 1]
        return band.reshape(-1, 3).mean(axis=0)

    inside = int((cue.start + cue.end) / 2 * 30)
    outside = [2, int(cue.end * 30) + 3, plan.frames - 1]
    assert np.abs(left_edge(inside, 2) - PALETTE[1]).max() < 40, left_edge(inside, 2)
    for frame in outside:
        assert np.abs(left_edge(frame, 2) - PALETTE[1]).max() > 80, (frame, left_edge(frame, 2))
    assert np.abs(left_edge(inside, 3) - PALETTE[2]).max() > 80  # the listener is not outlined


def test_the_readmes_first_example_shows_both_figures(engine: PreviewEngine, tmp_path: Path) -> None:
    """`generate "character1 waves at character2" -r hero.png -r friend.png`: two cut-out
    figures, neither of them taken for the place (friend.png once became a pink backdrop)."""
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    files = [examples / "hero.png", examples / "friend.png"]
    figures = [Reference.from_info(i, f.name, f, probe(f)) for i, f in enumerate(files, 1)]
    _, result = generate(engine, figures, tmp_path, prompt="character1 waves at character2", duration=2,
                         shot_type="single", audio=False)
    frames, container = decode(result.video_path)
    container.close()
    frame = frames[len(frames) // 2].astype(int)

    def share(colour: tuple[int, int, int]) -> float:  # of the frame, within a small distance
        return float((np.abs(frame - np.array(colour)).sum(axis=2) < 40).mean())

    hero, friend = share((70, 120, 210)), share((210, 80, 110))  # each figure's main colour
    assert hero > 0.01 and friend > 0.01, (hero, friend)
    assert friend < 0.25, friend  # a figure, not the whole picture behind them


def test_the_subtitle_names_its_speaker_in_their_colour(refs: list[Reference], tmp_path: Path) -> None:
    people = refs[:3]
    plan = uncaptioned(talk_plan(people, prompt="Character3 says to Character2: 'We should go now'.",
                                 shot_type="single", duration=3))
    (cue,) = plan.cues
    assert cue.speaker == 3
    # Spoken by a character outside the shot, the line is named on the subtitle only (no
    # outline, no tag), in that character's colour, which no reference here has.
    plan = dataclasses.replace(plan, cues=(dataclasses.replace(cue, speaker=5),))
    frames = render_plan(plan, people, tmp_path / "v.mp4", badge=False)
    colour = np.array(PALETTE[4])

    def named(frame: int) -> int:
        band = frames[frame][int(plan.height * 0.8):].astype(int)  # the subtitle's band
        return int((np.abs(band - colour).sum(axis=2) < 60).sum())

    inside = int((cue.start + cue.end) / 2 * plan.fps)
    after = min(plan.frames - 1, int(cue.end * plan.fps) + 3)
    assert named(inside) > 100, named(inside)  # "Character 5:" drawn in character 5's colour
    assert named(after) == 0, named(after)
