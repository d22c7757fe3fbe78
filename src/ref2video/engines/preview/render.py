"""Drawing and encoding the storyboard: the plan, frame by frame, into an H.264 MP4.

Speed matters (a 10 s 1080p preview should take well under 10 s on two cores), so the work
that can be done once is done once per shot: backgrounds are scaled with a margin and panned
by cropping, image sprites are scaled once and moved by whole pixels, subtitles and the
watermark are drawn once. Per frame only video references are scaled (by FFmpeg's swscale)
and pixels copied or blended; the encoder runs on its own thread alongside.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["render", "Encoder", "PALETTE"]

# A colour per character, for subtitle names and the generated backdrop's tint.
PALETTE = [(255, 196, 61), (102, 204, 255), (255, 128, 170), (140, 230, 140), (200, 160, 255)]
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
) -> None:
    """Write `plan` to `out`. `on_frame(i)` is called after each frame; it may raise to stop.
    `audio` is float32 (2, samples) at 48 kHz, exactly the video's length, or None for silence.
    `opening` (the media form's first frame) is the first frame, dissolving into the first shot."""
    overlays = _Overlays(plan, watermark)
    first = np.asarray(_cover(opening, plan.width, plan.height), np.float32) if opening is not None else None
    fade = min(_OPENING_FRAMES, plan.frames)
    with Encoder(out, plan.width, plan.height, plan.fps, audio) as encoder:
        for shot in plan.shots:
            painter = _ShotPainter(shot, plan, refs)
            for i in range(shot.frames):
                number = shot.start + i
                canvas = encoder.canvas()
                painter.paint(i, canvas)
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
    edge) instead of blending the whole rectangle."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None  # (h, w, 1) uint8
    opaque: np.ndarray | None = None  # (h, w, 3) bool: a full mask copies ten times faster than a broadcast one
    edge: tuple[np.ndarray, np.ndarray] | None = None  # rows and columns of partial pixels

    @classmethod
    def of(cls, rgb: np.ndarray, alpha: np.ndarray | None) -> _Layer:
        if alpha is None or bool((alpha == 255).all()):
            return cls(rgb)
        partial = (alpha[..., 0] > 0) & (alpha[..., 0] < 255)
        if partial.mean() > 0.3:  # mostly translucent: blending it all is cheaper
            return cls(rgb, alpha)
        return cls(rgb, alpha, np.repeat(alpha == 255, 3, axis=2), np.nonzero(partial))


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
    a = alpha.astype(np.uint16)
    dst[...] = ((src.astype(np.uint16) * a + dst.astype(np.uint16) * (255 - a) + 127) // 255).astype(np.uint8)


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


def _video_frames(ref: Reference, width: int, height: int, fps: int, *, cover: bool, dim: float = 1.0) -> Iterator[np.ndarray]:
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
    """Subtitles (attributed to their speaker) and the watermark, drawn once, blended per frame."""

    def __init__(self, plan: Plan, watermark: bool) -> None:
        self.items = [self._subtitle(cue, plan) for cue in plan.cues]
        if watermark:
            self.items.append(self._watermark(plan))

    def draw(self, canvas: np.ndarray, t: float) -> None:
        for item in self.items:
            if item.start <= t < item.end:
                _blit(canvas, item.layer, item.x, item.y)

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
        colour = PALETTE[(cue.speaker - 1) % len(PALETTE)] if cue.speaker else (255, 255, 255)
        draw.text((size, size * 0.35), name, font=font, fill=(*colour, 255))
        draw.text((size + name_w, size * 0.35), text, font=font, fill=(255, 255, 255, 255))
        x = (plan.width - width) // 2
        y = plan.height - height - int(plan.height * 0.05)
        return _Overlay(cue.start, cue.end, _layer(strip), x, y)

    @staticmethod
    def _watermark(plan: Plan) -> _Overlay:
        size = max(14, round(plan.height * 0.03))
        font = ImageFont.load_default(size=size)
        text = "AI Generated"
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        width, height = int(probe.textlength(text, font=font)) + size, int(size * 1.6)
        mark = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        ImageDraw.Draw(mark).text((size // 2, size * 0.25), text, font=font, fill=(255, 255, 255, 200))
        margin = int(plan.height * 0.03)
        return _Overlay(0.0, float("inf"), _layer(mark), plan.width - width - margin, plan.height - height - margin)


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
            rows = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)
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
