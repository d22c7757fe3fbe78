"""One fetched, checked reference, and the decoded pixels and sound engines ask of it.

Decoding lives here, once, for every engine (ARCHITECTURE.md, decision 4): an engine asks a
`Reference` for `image()`, `frames(fps)` or `audio(rate)` and never opens the file itself.
Nothing is decoded until asked, and nothing decoded is kept: a 30 s video would not fit.

    ref = references[0]                       # "character1"
    still = ref.image()                       # PIL image, RGB (RGBA when the source has alpha)
    for pixels in ref.frames(fps=30): ...     # numpy (H, W, 3) uint8, at exactly 30 fps
    pcm = ref.audio(48000)                    # numpy float32 (channels, samples), or None
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Generator, Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from ..errors import MediaError
from .probe import AudioInfo, ImageInfo, VideoInfo, decoding_errors, open_video
from .sniff import Format, Kind

__all__ = ["Reference"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference as the prompt names it: `character{index}`, 1-based, in request order.

    ref = Reference.from_info(1, "https://example.com/cat.png", path, info, sha256="...")
    ref.name, ref.kind, ref.width, ref.height   # "character1", "image", 320, 240
    """

    index: int
    url: str
    kind: Kind
    format: Format
    path: Path
    width: int
    height: int
    duration: float | None = None  # seconds, videos and voices only
    fps: float | None = None  # videos only
    has_audio: bool = False
    has_alpha: bool = False
    size: int = 0  # bytes
    sha256: str = ""

    @classmethod
    def from_info(
        cls, index: int, url: str, path: Path, info: ImageInfo | VideoInfo | AudioInfo, *, size: int = 0,
        sha256: str = "",
    ) -> Reference:
        """Build from a probe result."""
        if isinstance(info, AudioInfo):  # a voice: no pixels
            return cls(index, url, "audio", info.format, path, 0, 0, duration=info.duration, has_audio=True,
                       size=size, sha256=sha256)
        ref = cls(index, url, info.format.kind, info.format, path, info.width, info.height, size=size, sha256=sha256)
        if isinstance(info, VideoInfo):
            return dataclasses.replace(ref, duration=info.duration, fps=info.fps, has_audio=info.has_audio)
        return dataclasses.replace(ref, has_alpha=info.has_alpha)

    @property
    def name(self) -> str:
        """How the prompt refers to this reference."""
        return f"character{self.index}"

    def image(self) -> Image.Image:
        """The picture, upright (EXIF orientation applied), in RGB, or RGBA when it has alpha.

        For a video reference: its first frame, in RGB.
        """
        if self.kind == "video":
            with contextlib.closing(self._frames(1.0, total=1)) as first:
                return Image.fromarray(next(first).copy())
        with self._decoding("image"), Image.open(self.path, formats=[self.format.decoder]) as source:
            upright = ImageOps.exif_transpose(source)
            return upright.convert("RGBA" if self.has_alpha else "RGB")

    def frames(self, fps: float, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """The video's frames resampled to `fps`: frame n shows what plays at n / fps seconds.

        With `size` (width, height), frames are scaled by FFmpeg on the way out, which costs
        far less than scaling the full-size arrays afterwards.

        Frames are repeated or dropped, never blended; the count is round(duration * fps).
        Arrays are (height, width, 3) uint8 and read-only, since a repeated frame is the same
        array: copy one before changing it.
        """
        if self.kind != "video":
            raise ValueError(f"{self.name} is an image; use image()")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return self._frames(fps, total=max(1, round((self.duration or 0) * fps)), size=size)

    def audio(self, sample_rate: int = 48000) -> np.ndarray | None:
        """The first audio stream as float32 PCM (channels, samples), mono or stereo, at
        `sample_rate`, at most `duration` long; None for an image or a video without sound."""
        if self.kind == "image" or not self.has_audio:
            return None
        # As long as the container says (encoders pad the last AAC frame), which the probe bounded.
        limit = math.ceil((self.duration or 0) * sample_rate)
        with self._decoding("audio"), open_video(self.path, self.format) as container:
            stream = container.streams.audio[0]
            layout = "mono" if stream.codec_context.layout.nb_channels == 1 else "stereo"
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
            chunks = list(_pcm_chunks(container.decode(stream), resampler, limit))
        channels = 1 if layout == "mono" else 2
        pcm = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
        return pcm[:, :limit].astype(np.float32, copy=False)

    def _frames(self, fps: float, total: int, size: tuple[int, int] | None = None) -> Generator[np.ndarray, None, None]:
        # closing(): stopping early (after `total` frames) closes the file at once.
        with self._decoding("video"), contextlib.closing(self._decoded_frames()) as decoded:
            yield from _resample(decoded, fps, total, size)

    def _decoded_frames(self) -> Generator[tuple[float, av.VideoFrame], None, None]:
        """(seconds since the first frame, frame) in presentation order."""
        with open_video(self.path, self.format) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start: float | None = None
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else 0.0
                start = time if start is None else start
                yield time - start, frame

    @contextlib.contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """decoding_errors(), with this reference's number in front of the message."""
        try:
            with decoding_errors(what, self.path):
                yield
        except MediaError as exc:
            raise MediaError(f"reference {self.index}: {exc.message}", exc.code) from exc.__cause__ or exc


def _resample(
    decoded: Iterator[tuple[float, av.VideoFrame]], fps: float, total: int, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """Hold each source frame until the next one is due; stop after `total` frames.

    A frame is converted to RGB only if it is shown, so dropped frames cost no conversion.
    """
    emitted = 0
    held: av.VideoFrame | None = None
    pixels: np.ndarray | None = None
    for time, frame in decoded:
        while held is not None and emitted < total and emitted / fps < time - 1e-6:
            pixels = pixels if pixels is not None else _pixels(held, size)
            yield pixels
            emitted += 1
        if emitted >= total:
            return
        held, pixels = frame, None
    while held is not None and emitted < total:
        pixels = pixels if pixels is not None else _pixels(held, size)
        yield pixels
        emitted += 1


def _pixels(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    if size is None:
        array = frame.to_ndarray(format="rgb24")
    else:
        array = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="BILINEAR")
    array.flags.writeable = False
    return array


def _pcm_chunks(frames: Iterator[av.AudioFrame], resampler: av.AudioResampler, limit: int) -> Iterator[np.ndarray]:
    samples = 0
    for frame in frames:
        for out in resampler.resample(frame):
            samples += out.samples
            yield out.to_ndarray()
        if samples >= limit:
            return
    for out in resampler.resample(None):  # flush what the resampler holds back
        yield out.to_ndarray()
