"""Drawing and encoding the storyboard: the plan, frame by frame, into an H.264 MP4.

Speed matters (a 10 s 1080p preview should take well under 10 s on two cores), so the work
that can be done once is done once per shot: backgrounds are scaled with a margin and panned
by cropping, image sprites are scaled once and moved by whole pixels, the badge, captions,
subtitles, speaker tags and the watermark are drawn once. Per frame only video references are
scaled (by FFmpeg's swscale) and pixels copied or blended (never a whole-frame blend for an
overlay); the encoder runs on its own thread alongside.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...media.reference import Reference
from .plan import Box, Cue, Plan, Shot

__all__ = ["render", "Encoder", "PALETTE", "BADGE", "WATERMARK"]

# A colour per character, for subtitle names and the speaker's outline and tag.
PALETTE = [(255, 196, 61), (102, 204, 255), (255, 128, 170), (140, 230, 140), (200, 160, 255)]
# A preview is a collage of the user's own pictures: it says so, and never claims to be AI output.
BADGE = "PREVIEW · storyboard"
WATERMARK = "ref2video storyboard preview"
_AUDIO_RATE = 48000
_OPENING_FRAMES = 15  # half a second from the first frame into the storyboard


def render(
    plan: Plan,
    refs: dict[int, Reference],
    out: Path,
    *,
    audio: np.ndarray | None,
    watermark: bool,
    on_frame: Callable[[int], None],
    opening: Image.Image | None = None,
    badge: bool = True,
) -> None:
    """Write `plan` to `out`. `on_frame(i)` is called after each frame; it may raise to stop.
    `audio` is float32 (2, samples) at 48 kHz, exactly the video's length, or None for silence.
    `opening` (the media form's first frame) is the first frame, dissolving into the first shot.
    `badge` puts the small "PREVIEW · storyboard" pill on every frame."""
    overlays = _Overlays(plan, watermark, badge)
    speakers = _Speakers(plan, overlays.tops)
    first = np.asarray(_cover(opening, plan.width, plan.height), np.float32) if opening is not None else None
    fade = min(_OPENING_FRAMES, plan.frames)
    with Encoder(out, plan.width, plan.height, plan.fps, audio) as encoder:
        for shot in plan.shots:
            painter = _ShotPainter(shot, plan, refs)
            for i in range(shot.frames):
                number = shot.start + i
                canvas = encoder.canvas()
                painter.paint(i, canvas)
                speakers.draw(canvas, shot, number)
                if first is not None and number < fade:
                    keep = 1.0 - number / fade
                    canvas[...] = (first * keep + canvas * (1.0 - keep)).astype(np.uint8)
                overlays.draw(canvas, number / plan.fps)
                encoder.submit()
                on_frame(number)


# -- pixels ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layer:
    """Pixels to put on the canvas. With alpha, the partly transparent pixels are found once,
    so each frame copies the opaque ones and blends only the rest (for a cut-out, a thin
    edge) instead of blending the whole rectangle. A mostly translucent layer (a subtitle
    strip, a caption) is blended whole, from its colour already multiplied by its alpha."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None  # (h, w, 1) uint8
    opaque: np.ndarray | None = None  # (h, w, 3) bool: a full mask copies ten times faster than a broadcast one
    edge: tuple[np.ndarray, np.ndarray] | None = None  # rows and columns of partial pixels
    over: tuple[np.ndarray, np.ndarray] | None = None  # (rgb * alpha, 255 - alpha), (h, w, 3) uint16

    @classmethod
    def of(cls, rgb: np.ndarray, alpha: np.ndarray | None) -> _Layer:
        if alpha is None or bool((alpha == 255).all()):
            return cls(rgb)
        partial = (alpha[..., 0] > 0) & (alpha[..., 0] < 255)
        if partial.mean() > 0.3:  # mostly translucent: blending it all is cheaper
            a = np.repeat(alpha, 3, axis=2).astype(np.uint16)
            return cls(rgb, alpha, over=(rgb.astype(np.uint16) * a, 255 - a))
        rows, columns = np.nonzero(partial)
        return cls(rgb, alpha, np.repeat(alpha == 255, 3, axis=2), (rows, columns))


def _blit(canvas: np.ndarray, layer: _Layer, x: int, y: int) -> None:
    """Put `layer` on `canvas` at (x, y), clipped to the canvas."""
    h, w = layer.rgb.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    window = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    src, dst = layer.rgb[window], canvas[y0:y1, x0:x1]
    if layer.alpha is None:
        dst[...] = src
    elif layer.over is not None:
        _over(dst, layer.over[0][window], layer.over[1][window])
    elif layer.opaque is None or layer.edge is None:
        _blend(dst, src, layer.alpha[window])
    else:
        np.copyto(dst, src, where=layer.opaque[window])
        ys, xs = layer.edge
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):  # clipped: keep the edge pixels inside
            inside = (ys >= y0 - y) & (ys < y1 - y) & (xs >= x0 - x) & (xs < x1 - x)
            ys, xs = ys[inside], xs[inside]
        rows, cols = ys + (y - y0), xs + (x - x0)
        mixed = dst[rows, cols][:, None, :]
        _blend(mixed, layer.rgb[ys, xs][:, None, :], layer.alpha[ys, xs][:, None, :])
        dst[rows, cols] = mixed[:, 0, :]


def _blend(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> None:
    a = np.broadcast_to(alpha, src.shape).astype(np.uint16)
    _over(dst, src.astype(np.uint16) * a, 255 - a)


def _over(dst: np.ndarray, premultiplied: np.ndarray, inverse: np.ndarray) -> None:
    """dst = round((src * a + dst * (255 - a)) / 255), given src * a and 255 - a as full-shape
    uint16: in place, without broadcasting or integer division, which cost ten times more."""
    mixed = dst * inverse
    mixed += premultiplied
    mixed += 128
    mixed += mixed >> 8  # with the next shift, (x + 127) // 255 exactly for x <= 255 * 255
    mixed >>= 8
    dst[...] = mixed


def _layer(image: Image.Image) -> _Layer:
    """A layer of an RGB or RGBA picture."""
    pixels = np.asarray(image)
    if image.mode == "RGBA":
        return _Layer.of(np.ascontiguousarray(pixels[..., :3]), np.ascontiguousarray(pixels[..., 3:4]))
    return _Layer(np.ascontiguousarray(pixels))


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and centre-crop `image` to fill width x height."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


# -- one shot ----------------------------------------------------------------------------


class _ShotPainter:
    """Frames of one shot: the backdrop, then each character in its box."""

    def __init__(self, shot: Shot, plan: Plan, refs: dict[int, Reference]) -> None:
        self.shot = shot
        self.plan = plan
        self.refs = refs
        seconds = shot.frames / plan.fps
        # The backdrop is drawn wider than the frame by the distance the camera pans.
        self.margin = int(abs(shot.pan[0]) * seconds) + 2
        self.backdrop = self._backdrop()
        self.sprites: list[Iterator[_Layer]] | None = None

    def paint(self, i: int, canvas: np.ndarray) -> None:
        """Draw the shot's frame `i` (frames come in order) onto `canvas`."""
        if self.sprites is None:
            self.sprites = [self._sprite(p.character, p.box) for p in self.shot.placements]
        t = i / self.plan.fps
        offset = min(self.margin, int(abs(self.shot.pan[0]) * t))
        start = offset if self.shot.pan[0] >= 0 else self.margin - offset
        canvas[...] = next(self.backdrop)[:, start : start + self.plan.width]
        for placement, sprite in zip(self.shot.placements, self.sprites):
            box = placement.box_at(t)
            _blit(canvas, next(sprite), box.x, box.y)

    def _backdrop(self) -> Iterator[np.ndarray]:
        width, height = self.plan.width + self.margin, self.plan.height
        scene = self.refs.get(self.plan.scene) if self.plan.scene else None
        if scene is not None and scene.kind == "video":
            return _video_frames(scene, width, height, self.plan.fps, cover=True, dim=0.8)
        if scene is not None:
            picture = _cover(scene.image().convert("RGB"), width, height)
            pixels = (np.asarray(picture, np.float32) * 0.8).astype(np.uint8)  # dimmed: characters first
        else:
            pixels = _generated_backdrop(width, height, self.plan.seed + self.shot.start)
        return itertools.repeat(pixels)

    def _sprite(self, character: int, box: Box) -> Iterator[_Layer]:
        ref = self.refs[character]
        if ref.kind == "video":
            return (_Layer(f) for f in _video_frames(ref, box.w, box.h, self.plan.fps, cover=False))
        picture = ref.image().resize((box.w, box.h), Image.Resampling.LANCZOS)
        return itertools.repeat(_layer(_framed(picture)))


def _framed(picture: Image.Image) -> Image.Image:
    """Opaque pictures get a thin light border, so they read as cards over the scene."""
    if picture.mode == "RGBA":
        return picture
    border = max(2, min(picture.size) // 90)
    framed = picture.copy()
    ImageDraw.Draw(framed).rectangle((0, 0, framed.width - 1, framed.height - 1), outline=(245, 245, 240), width=border)
    return framed


def _video_frames(ref: Reference, width: int, height: int, fps: int, *, cover: bool,
                  dim: float = 1.0) -> Iterator[np.ndarray]:
    """The reference's frames at `fps`, looping forever, scaled to width x height (for `cover`,
    scaled to fill and centre-cropped, so the picture keeps its aspect).

    Decoded and scaled at half the rate and each shown twice: scaling is the costliest step
    of a frame, and 15 fps reads as smooth playback in a storyboard."""
    size, crop = (width, height), None
    if cover:
        scale = max(width / ref.width, height / ref.height)
        size = (max(width, round(ref.width * scale)), max(height, round(ref.height * scale)))
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        crop = (slice(top, top + height), slice(left, left + width))
    while True:
        produced = False
        for pixels in ref.frames(fps / 2, size=size):
            produced = True
            out = pixels[crop] if crop else pixels
            out = (out * dim).astype(np.uint8) if dim != 1.0 else out
            yield out
            yield out
        if not produced:
            raise ValueError(f"{ref.name} has no frames")


def _generated_backdrop(width: int, height: int, seed: int) -> np.ndarray:
    """A calm two-colour stage (sky and floor) when no reference is the scene."""
    rng = np.random.default_rng(seed)
    top = rng.integers(40, 110, 3)
    bottom = rng.integers(15, 60, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    column = top[None, :] * (1 - ramp) + bottom[None, :] * ramp
    floor = int(height * 0.78)
    column[floor:] = column[floor:] * 0.7
    return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (height, width, 3)).astype(np.uint8))


# -- overlays ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Overlay:
    start: float
    end: float
    layer: _Layer
    x: int
    y: int


class _Overlays:
    """What is drawn over the picture, each drawn once and blended per frame: the preview
    badge (top left, every frame), each shot's caption (beside the badge), subtitles
    attributed to their speaker, and the watermark (bottom right)."""

    def __init__(self, plan: Plan, watermark: bool, badge: bool = True) -> None:
        self.margin = max(8, round(_unit(plan) * 0.025))
        self.items: list[_Overlay] = []
        left = self.margin
        self.header = self.margin  # bottom of the badge and caption row, per shot below
        if badge:
            mark = self._badge(plan)
            self.items.append(mark)
            left = mark.x + mark.layer.rgb.shape[1] + self.margin // 2
            self.header = mark.y + mark.layer.rgb.shape[0]
        self.tops: dict[int, int] = {}  # shot start -> first row free of the header there
        for shot in plan.shots:
            caption = self._caption(shot, plan, left)
            bottom = self.header
            if caption is not None:
                self.items.append(caption)
                bottom = max(bottom, caption.y + caption.layer.rgb.shape[0])
            self.tops[shot.start] = bottom + self.margin // 3
        self.items += [self._subtitle(cue, plan) for cue in plan.cues]
        if watermark:
            self.items.append(self._watermark(plan))

    def draw(self, canvas: np.ndarray, t: float) -> None:
        for item in self.items:
            if item.start <= t < item.end:
                _blit(canvas, item.layer, item.x, item.y)

    def _badge(self, plan: Plan) -> _Overlay:
        """A small pill that says what this is: modest, but on every frame."""
        size = max(11, round(_unit(plan) * 0.024))
        font = ImageFont.load_default(size=size)
        head, tail = BADGE.split(" ", 1)
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        head_w = probe.textlength(f"{head} ", font=font)
        pad = round(size * 0.7)
        width, height = int(head_w + probe.textlength(tail, font=font)) + 2 * pad, round(size * 1.7)
        pill = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(pill)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), height // 2, fill=(15, 15, 20, 150))
        draw.text((pad, height / 2), head, font=font, fill=(255, 214, 102, 235), anchor="lm")
        draw.text((pad + head_w, height / 2), tail, font=font, fill=(240, 240, 240, 235), anchor="lm")
        return _Overlay(0.0, float("inf"), _layer(pill), self.margin, self.margin)

    def _caption(self, shot: Shot, plan: Plan, left: int) -> _Overlay | None:
        """The shot's caption in at most two lines, from `left` to the right margin."""
        if not shot.caption:
            return None
        size = max(11, round(_unit(plan) * 0.026))
        font = ImageFont.load_default(size=size)
        pad = round(size * 0.5)
        room = plan.width - left - self.margin - 2 * pad
        if room < size * 4:
            return None  # a frame too narrow for words
        lines = _wrap(shot.caption, font, room, 2)
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        line_h = round(size * 1.3)
        width = int(max(probe.textlength(line, font=font) for line in lines)) + 2 * pad
        height = line_h * len(lines) + round(size * 0.4)
        strip = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(strip)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), round(size * 0.4), fill=(0, 0, 0, 130))
        for n, line in enumerate(lines):
            draw.text((pad, height / 2 + (n - (len(lines) - 1) / 2) * line_h), line, font=font,
                      fill=(235, 235, 235, 255), anchor="lm")
        return _Overlay(shot.start / plan.fps, shot.end / plan.fps, _layer(strip), left, self.margin)

    @staticmethod
    def _subtitle(cue: Cue, plan: Plan) -> _Overlay:
        size = max(16, round(plan.height * 0.042))
        font = ImageFont.load_default(size=size)
        name = f"Character {cue.speaker}: " if cue.speaker else ""
        text = cue.text
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        name_w = probe.textlength(name, font=font)
        width = min(plan.width - 40, int(name_w + probe.textlength(text, font=font)) + 2 * size)
        height = int(size * 1.8)
        strip = Image.new("RGBA", (width, height), (0, 0, 0, 150))
        draw = ImageDraw.Draw(strip)
        draw.text((size, size * 0.35), name, font=font, fill=(*_colour(cue.speaker), 255))
        draw.text((size + name_w, size * 0.35), text, font=font, fill=(255, 255, 255, 255))
        x = (plan.width - width) // 2
        y = plan.height - height - int(plan.height * 0.05)
        return _Overlay(cue.start, cue.end, _layer(strip), x, y)

    @staticmethod
    def _watermark(plan: Plan) -> _Overlay:
        size = max(14, round(plan.height * 0.03))
        font = ImageFont.load_default(size=size)
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        width, height = int(probe.textlength(WATERMARK, font=font)) + size, int(size * 1.6)
        mark = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        ImageDraw.Draw(mark).text((size // 2, size * 0.25), WATERMARK, font=font, fill=(255, 255, 255, 200))
        margin = int(plan.height * 0.03)
        return _Overlay(0.0, float("inf"), _layer(mark), plan.width - width - margin, plan.height - height - margin)


class _Speakers:
    """While a line is spoken, its speaker (when in the shot) is outlined in their colour,
    with a name tag on the outline. The tags are drawn once; per frame only the outline's
    four strips are filled and the tag copied."""

    def __init__(self, plan: Plan, tops: dict[int, int]) -> None:
        self.plan = plan
        self.tops = tops
        self.cues = [cue for cue in plan.cues if cue.speaker]
        self.width = max(3, round(_unit(plan) * 0.008))
        self.tags = {cue.speaker: self._tag(cue.speaker) for cue in self.cues if cue.speaker}

    def draw(self, canvas: np.ndarray, shot: Shot, frame: int) -> None:
        t = frame / self.plan.fps
        cue = next((c for c in self.cues if c.start <= t < c.end), None)  # cues never overlap
        if cue is None or cue.speaker not in shot.characters:
            return
        box = shot.box_of(cue.speaker, frame)
        w = self.width
        edge = max(1, w // 3)  # a dark rim keeps a light colour visible on a light scene
        _frame_box(canvas, box.x - w - edge, box.y - w - edge, box.w + 2 * (w + edge), box.h + 2 * (w + edge),
                   edge, (20, 20, 20))
        _frame_box(canvas, box.x - w, box.y - w, box.w + 2 * w, box.h + 2 * w, w, _colour(cue.speaker))
        tag = self.tags[cue.speaker]
        th, tw = tag.rgb.shape[:2]
        x = min(max(box.x - w, 0), self.plan.width - tw)
        y = min(max(box.y - w - th, self.tops.get(shot.start, 0)), self.plan.height - th)
        _blit(canvas, tag, x, y)

    def _tag(self, speaker: int) -> _Layer:
        size = max(11, round(_unit(self.plan) * 0.024))
        font = ImageFont.load_default(size=size)
        text = f"Character {speaker}"
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        pad = round(size * 0.5)
        width, height = int(probe.textlength(text, font=font)) + 2 * pad, round(size * 1.6)
        tag = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(tag)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), round(size * 0.35), fill=(*_colour(speaker), 255))
        draw.text((pad, height / 2), text, font=font, fill=(20, 20, 20, 255), anchor="lm")
        return _layer(tag)


def _frame_box(canvas: np.ndarray, x: int, y: int, w: int, h: int, width: int, colour: tuple[int, int, int]) -> None:
    """A rectangle's outline `width` px thick, inside (x, y, w, h), clipped to the canvas."""
    rows, cols = canvas.shape[:2]
    for y0, y1, x0, x1 in ((y, y + width, x, x + w), (y + h - width, y + h, x, x + w),
                           (y, y + h, x, x + width), (y, y + h, x + w - width, x + w)):
        y0, y1, x0, x1 = max(y0, 0), min(y1, rows), max(x0, 0), min(x1, cols)
        if y0 < y1 and x0 < x1:
            canvas[y0:y1, x0:x1] = colour


def _colour(character: int | None) -> tuple[int, int, int]:
    return PALETTE[(character - 1) % len(PALETTE)] if character else (255, 255, 255)


def _unit(plan: Plan) -> int:
    """What the header and tags scale with: the frame's short side, so that a portrait frame
    gets the same share of its width as a landscape one of its height."""
    return min(plan.width, plan.height)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, room: float, most: int) -> list[str]:
    """`text` in lines no wider than `room`, at most `most` of them, the last cut with an ellipsis."""
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))

    def fits(line: str) -> bool:
        return probe.textlength(line, font=font) <= room

    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if fits(trial):
            current = trial
            continue
        if current:
            lines.append(current)
        while not fits(word):  # a word (or unspaced CJK) wider than the room: cut it by characters
            cut = max(1, next((k for k in range(len(word), 0, -1) if fits(word[:k])), 1))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > most:
        last = lines[most - 1]
        while last and not fits(f"{last}…"):
            last = last.rsplit(" ", 1)[0] if " " in last else last[:-1]
        lines = [*lines[: most - 1], f"{last.rstrip(' ,;:')}…"]
    return lines


# -- encoding ----------------------------------------------------------------------------


class Encoder:
    """H.264 yuv420p at a constant frame rate, AAC stereo 48 kHz, index at the front.

    Frames are drawn straight into a small pool of FFmpeg frames (`canvas()`, then `submit()`),
    so no pixel is copied on the way to the encoder, and a thread converts and encodes them
    while the next ones are drawn (PyAV releases the GIL there). `ultrafast` because previews
    are drafts: encoding time, not file size, is what a user waits for.
    """

    POOL = 4

    def __init__(self, path: Path, width: int, height: int, fps: int, audio: np.ndarray | None) -> None:
        self.path = path
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        self.video = self.container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.time_base = Fraction(1, fps)
        self.audio = audio
        self.sound = self.container.add_stream("aac", rate=_AUDIO_RATE, layout="stereo") if audio is not None else None
        self.free: queue.Queue[tuple[av.VideoFrame, np.ndarray]] = queue.Queue()
        for _ in range(self.POOL):
            frame = av.VideoFrame(width, height, "rgb24")
            plane = frame.planes[0]
            # memoryview: on Python 3.11 numpy's types take no buffer protocol, only named kinds
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(height, plane.line_size)
            self.free.put((frame, rows[:, : width * 3].reshape(height, width, 3)))
        self.ready: queue.Queue[tuple[av.VideoFrame, np.ndarray] | None] = queue.Queue()
        self.current: tuple[av.VideoFrame, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.count = 0
        self.thread = threading.Thread(target=self._run, name="ref2video-encode", daemon=True)
        self.thread.start()

    def canvas(self) -> np.ndarray:
        """The next frame's pixels, (height, width, 3) RGB, to draw on before `submit()`."""
        if self.error is not None:
            raise self.error
        self.current = self.free.get()
        return self.current[1]

    def submit(self) -> None:
        assert self.current is not None
        self.ready.put(self.current)
        self.current = None

    def write(self, pixels: np.ndarray) -> None:
        """Encode a whole frame given as an array."""
        self.canvas()[...] = pixels
        self.submit()

    def _run(self) -> None:
        try:
            while (item := self.ready.get()) is not None:
                frame = item[0].reformat(format="yuv420p")
                self.free.put(item)  # the RGB frame is free again once converted
                frame.pts = self.count
                self.count += 1
                self.container.mux(self.video.encode(frame))
        except BaseException as exc:  # handed to the drawing thread on its next canvas()
            self.error = exc
            for _ in range(self.POOL):  # never leave the drawing thread waiting for a frame
                self.free.put((av.VideoFrame(16, 16, "rgb24"), np.empty((16, 16, 3), np.uint8)))

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.ready.put(None)
        self.thread.join()
        try:
            if exc is None and self.error is None:
                self.container.mux(self.video.encode(None))
                if self.sound is not None and self.audio is not None:
                    self._write_audio(self.audio)
        finally:
            self.container.close()
        if exc is not None or self.error is not None:
            self.path.unlink(missing_ok=True)  # never leave a partial file behind
        if exc is None and self.error is not None:
            raise self.error

    def _write_audio(self, pcm: np.ndarray) -> None:
        assert self.sound is not None
        chunk = 1024
        pcm = np.ascontiguousarray(np.clip(pcm, -1.0, 1.0).astype(np.float32))
        for start in range(0, pcm.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(pcm[:, start : start + chunk], format="fltp", layout="stereo")
            frame.sample_rate = _AUDIO_RATE
            frame.pts = start
            self.container.mux(self.sound.encode(frame))
        self.container.mux(self.sound.encode(None))
