"""What a reference file holds, read from its headers, and whether it is within the limits.

Images are measured without decoding a pixel: Pillow's `Image.open` only parses the header,
and the limits are enforced before anything calls `load()`. Pillow's own decompression-bomb
guard refuses absurd headers (a PNG that declares 100000x100000) even earlier, inside `open`.
Each file is opened only by the decoder its sniffed format names, so a file cannot pick one
of Pillow's or FFmpeg's many other parsers (FFmpeg playlists that open further URLs, say).

Videos are opened with PyAV's ISO-BMFF demuxer, restricted to local files and with external
data references off. Their packets are all read (no decoding) to prove the file is whole,
and the first frame is decoded to prove the codec works. Every PyAV and Pillow error becomes
a MediaError (InvalidParameter) whose message names the rule or the defect.

    info = probe(path, PNG)          # ImageInfo(width=320, height=240, ...)
    info = probe(path, MP4)          # VideoInfo(duration=2.0, fps=10.0, has_audio=True, ...)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import av
from PIL import Image

from ..errors import MediaError
from .sniff import SNIFF_BYTES, Format, sniff

__all__ = ["Limits", "ImageInfo", "VideoInfo", "AudioInfo", "probe", "probe_image", "probe_video", "probe_audio",
           "open_video"]

# Open options for every video: read local files only; never follow a `dref` to another file.
_VIDEO_OPTIONS = {"protocol_whitelist": "file", "enable_drefs": "0"}
# EXIF orientations that turn the picture a quarter: the displayed sides swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


@dataclasses.dataclass(frozen=True)
class Limits:
    """The reference rules of docs/protocol.md §2-3 (sizes in bytes live in FetchPolicy)."""

    min_side: int = 240  # image pixels per side
    max_side: int = 8000
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    # Not in the urls form's rules: sanity bounds so decoding a video stays affordable. The
    # media form states its own (240 to 4096 px per side).
    min_video_side: int = 0
    max_video_side: int = 8000
    max_fps: float = 240.0
    # A voice of the media form (docs/protocol.md §3).
    min_audio_seconds: float = 1.0
    max_audio_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    format: Format
    width: int  # as displayed, after EXIF orientation
    height: int
    mode: str
    has_alpha: bool


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    format: Format
    width: int
    height: int
    duration: float  # seconds
    fps: float
    has_audio: bool
    frames: int  # video packets in the file


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    format: Format
    duration: float  # seconds
    sample_rate: int
    channels: int


def probe(path: Path, fmt: Format | None = None, limits: Limits = Limits()) -> ImageInfo | VideoInfo | AudioInfo:
    """Measure and check `path`; `fmt` is sniffed from the file when not given."""
    fmt = fmt or _sniff_file(path)
    if fmt.kind == "audio":
        return probe_audio(path, fmt, limits)
    return probe_image(path, fmt, limits) if fmt.kind == "image" else probe_video(path, fmt, limits)


def probe_image(path: Path, fmt: Format, limits: Limits = Limits()) -> ImageInfo:
    with decoding_errors("image", path):
        with Image.open(path, formats=[fmt.decoder]) as image:
            width, height = image.size
            _check_image_sides(width, height, limits)  # symmetric, so before turning
            if _orientation(image) in _QUARTER_TURNS:
                width, height = height, width
            info = ImageInfo(fmt, width, height, image.mode, _has_alpha(image))
        with Image.open(path, formats=[fmt.decoder]) as image:
            image.verify()  # chunk checksums (PNG) without inflating pixels
    return info


def probe_video(path: Path, fmt: Format, limits: Limits = Limits()) -> VideoInfo:
    with decoding_errors("video", path), open_video(path, fmt) as container:
        if not container.streams.video:
            raise MediaError("the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        duration = _duration(container, stream)
        _check_video(width, height, duration, fps, limits)
        info = VideoInfo(fmt, width, height, duration, fps, bool(container.streams.audio), stream.frames)
        _check_complete(container)
        container.seek(0)
        if next(container.decode(stream), None) is None:
            raise MediaError("the video has no decodable frame")
    return info


def probe_audio(path: Path, fmt: Format, limits: Limits = Limits()) -> AudioInfo:
    """A WAV or MP3 voice: its length within the limits, whole, its first frame decodable."""
    with decoding_errors("audio", path), open_video(path, fmt) as container:
        if not container.streams.audio:
            raise MediaError("the file has no audio stream")
        stream = container.streams.audio[0]
        seconds = round(_duration(container, stream), 3)
        if not limits.min_audio_seconds <= seconds <= limits.max_audio_seconds:
            raise MediaError(f"the recording is {seconds:g} s long; a voice must be "
                             f"{limits.min_audio_seconds:g} to {limits.max_audio_seconds:g} s")
        info = AudioInfo(fmt, seconds, stream.codec_context.sample_rate, stream.codec_context.layout.nb_channels)
        _check_complete(container)
        container.seek(0)
        if next(container.decode(stream), None) is None:
            raise MediaError("the recording has no decodable audio")
    return info


@contextlib.contextmanager
def open_video(path: Path, fmt: Format) -> Iterator[av.container.InputContainer]:
    """Open a sniffed video (or voice) with only its own demuxer and only local file access."""
    container = av.open(str(path), format=fmt.decoder, options=_VIDEO_OPTIONS)
    try:
        yield container
    finally:
        container.close()


@contextlib.contextmanager
def decoding_errors(what: str, path: Path | None = None) -> Iterator[None]:
    """Turn whatever Pillow or PyAV raise on bad bytes into MediaError (InvalidParameter).

    The message reaches the client, so the file's place on this server is left out of it.
    """
    try:
        yield
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError(f"the image declares too many pixels ({_describe(exc, path)})") from exc
    except Exception as exc:  # both libraries raise many types on hostile input
        raise MediaError(f"the {what} is broken or truncated ({_describe(exc, path)})") from exc


def _describe(exc: Exception, path: Path | None) -> str:
    if isinstance(exc, av.error.FFmpegError):
        detail = exc.strerror or ""  # str() would name the file
    else:
        detail = str(exc)
        if path is not None:
            detail = detail.replace(str(path), path.name)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _sniff_file(path: Path) -> Format:
    with path.open("rb") as file:
        fmt = sniff(file.read(SNIFF_BYTES))
    if fmt is None:
        raise MediaError("unsupported format")
    return fmt


def _orientation(image: Image.Image) -> int:
    # Only EXIF the header already held: PNG's getexif() would decode the image to look
    # for an eXIf chunk after the pixels.
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(0x0112, 1) or 1)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _check_image_sides(width: int, height: int, limits: Limits) -> None:
    if min(width, height) < limits.min_side:
        raise MediaError(f"the image is {width}x{height} px, below {limits.min_side} px per side")
    if max(width, height) > limits.max_side:
        raise MediaError(f"the image is {width}x{height} px, above {limits.max_side} px per side")


def _duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    if container.duration:
        return container.duration / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    raise MediaError("the video does not state its duration")


def _check_video(width: int, height: int, duration: float, fps: float, limits: Limits) -> None:
    if not (0 < width <= limits.max_video_side and 0 < height <= limits.max_video_side):
        raise MediaError(f"the video is {width}x{height} px, above {limits.max_video_side} px per side")
    if min(width, height) < limits.min_video_side:
        raise MediaError(f"the video is {width}x{height} px, below {limits.min_video_side} px per side")
    seconds = round(duration, 3)
    if seconds < limits.min_seconds:
        raise MediaError(f"the video is {seconds:g} s long, below {limits.min_seconds:g} s")
    if seconds > limits.max_seconds:
        raise MediaError(f"the video is {seconds:g} s long, above {limits.max_seconds:g} s")
    if not 0 < fps <= limits.max_fps:
        raise MediaError(f"the video frame rate {fps:g} fps is outside 0 to {limits.max_fps:g} fps")


def _check_complete(container: av.container.InputContainer) -> None:
    """Read every packet (cheap: no decoding). A short read, or fewer packets than the index
    promises, means the file was cut off."""
    present: collections.Counter[int] = collections.Counter()
    for packet in container.demux():
        if packet.is_corrupt:  # FFmpeg marks a packet it could not read in full
            raise MediaError(f"the video is truncated ({packet.stream.type} packet at byte {packet.pos} is cut off)")
        if packet.size:
            present[packet.stream.index] += 1
    for stream in container.streams:
        if stream.frames and present[stream.index] < stream.frames:
            found = f"{present[stream.index]} of {stream.frames} packets present"
            raise MediaError(f"the video is truncated ({stream.type} stream: {found})")
