"""Small real media files for the media tests, made with Pillow and PyAV."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

RED, BLUE = (220, 30, 30), (30, 30, 220)


def make_image(path: Path, fmt: str, size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Path:
    """A two-colour image: left half red, right half blue (alpha 128 on the right for RGBA)."""
    image = Image.new(mode, size, RED + ((255,) if mode == "RGBA" else ()))
    right = BLUE + ((128,) if mode == "RGBA" else ())
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    image.save(path, format=fmt)
    return path


def make_video(
    path: Path,
    seconds: float,
    *,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    audio: bool = False,
    container: str = "mp4",
    faststart: bool = False,
    colour: tuple[int, int, int] | None = None,
) -> Path:
    """An H.264 clip, red for the first half of its frames and blue after; with `audio`, a
    440 Hz stereo AAC tone of the same length. `colour` makes every frame that colour."""
    options = {"movflags": "faststart"} if faststart else {}  # the index before the data
    with av.open(str(path), "w", format=container, options=options) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, fps)
        sound = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        count = round(seconds * fps)
        for i in range(count):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[:] = colour or (RED if i < count // 2 else BLUE)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            _write_tone(out, sound, seconds)
    return path


def _write_tone(out: av.container.OutputContainer, sound: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = round(seconds * 48000)
    t = np.arange(samples) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = np.stack([tone[start : start + 1024]] * 2)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = start
        out.mux(sound.encode(frame))
    out.mux(sound.encode())


def make_exif_jpeg(path: Path, size: tuple[int, int], orientation: int) -> Path:
    """A JPEG stored `size` wide and high whose EXIF says to show it turned."""
    image = Image.new("RGB", size, RED)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width` x `height`, with one tiny IDAT: a decompression bomb
    must be refused from the header, before anything is inflated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def make_voice(path: Path, seconds: float, pitch: float = 120.0, *, fmt: str = "wav") -> Path:
    """A voice-like recording: a buzz at `pitch` Hz with falling harmonics (what speech's
    voiced sounds are), in WAV (16-bit PCM) or MP3, 16 kHz mono."""
    rate = 16000
    t = np.arange(round(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 8)) * 0.2
    codec = {"wav": "pcm_s16le", "mp3": "libmp3lame"}[fmt]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        samples = buzz.astype(np.float32)[None, :]
        sample_format = "s16" if fmt == "wav" else "fltp"
        pcm = (samples * 32767).astype(np.int16) if fmt == "wav" else samples
        for start in range(0, pcm.shape[1], 1152):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 1152]),
                                               format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
