"""media/reference.py: decoded pixels and sound, the same for every engine."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ref2video.errors import MediaError
from ref2video.media.probe import probe
from ref2video.media.reference import Reference
from ref2video.media.sniff import MP4, PNG

from .media_files import BLUE, RED, make_exif_jpeg


def reference(path: Path, index: int = 1) -> Reference:
    return Reference.from_info(index, f"http://example.test/{path.name}", path, probe(path))


def close_to(pixel: np.ndarray | tuple[int, ...], colour: tuple[int, ...]) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int)[: len(colour)] - colour) <= 12))


def _colour(pixel: np.ndarray) -> str:
    return "red" if close_to(pixel, RED) else "blue" if close_to(pixel, BLUE) else "other"


@pytest.mark.parametrize("name", ["jpeg", "png", "bmp", "webp"])
def test_image_is_rgb(media: dict[str, Path], name: str) -> None:
    ref = reference(media[name])
    assert (ref.name, ref.kind, ref.width, ref.height) == ("character1", "image", 320, 240)
    image = ref.image()
    assert image.mode == "RGB" and image.size == (320, 240)
    assert close_to(image.getpixel((10, 10)), RED)
    assert close_to(image.getpixel((310, 10)), BLUE)


def test_image_keeps_alpha(media: dict[str, Path]) -> None:
    image = reference(media["rgba.png"]).image()
    assert image.mode == "RGBA"
    assert image.getpixel((10, 10)) == (*RED, 255)
    assert image.getpixel((310, 10)) == (*BLUE, 128)


def test_image_is_turned_upright(tmp_path: Path) -> None:
    ref = reference(make_exif_jpeg(tmp_path / "turned.jpg", (300, 260), orientation=6))
    assert ref.image().size == (ref.width, ref.height) == (260, 300)


def test_image_of_a_video_is_its_first_frame(media: dict[str, Path]) -> None:
    image = reference(media["mp4"]).image()
    assert image.mode == "RGB" and image.size == (320, 240)
    assert close_to(image.getpixel((160, 120)), RED)


@pytest.mark.parametrize(("fps", "count"), [(5, 10), (10, 20), (25, 50), (30, 60)])
def test_frames_are_resampled_to_the_rate_asked(media: dict[str, Path], fps: int, count: int) -> None:
    ref = reference(media["mp4+aac"])
    frames = list(ref.frames(fps))
    assert len(frames) == count
    assert all(frame.shape == (240, 320, 3) and frame.dtype == np.uint8 for frame in frames)
    # The source is red for its first second and blue after: time is kept, not frame numbers.
    colours = [_colour(frame[120, 160]) for frame in frames]
    assert colours == ["red"] * (count // 2) + ["blue"] * (count // 2)


def test_repeated_frames_are_read_only(media: dict[str, Path]) -> None:
    frames = list(reference(media["mov"]).frames(30))
    assert frames[0] is frames[1]  # 10 fps held for 3 output frames each
    with pytest.raises(ValueError):
        frames[0][0, 0] = 0


def test_frames_of_an_image_is_a_mistake(media: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="character1 is an image"):
        reference(media["png"]).frames(10)
    with pytest.raises(ValueError, match="fps must be positive"):
        reference(media["mp4"]).frames(0)


@pytest.mark.parametrize("name", ["mp4+aac", "mov+aac"])
def test_audio_is_pcm_at_the_rate_asked(media: dict[str, Path], name: str) -> None:
    ref = reference(media[name])
    assert ref.has_audio
    pcm = ref.audio()
    assert pcm is not None and pcm.dtype == np.float32
    assert pcm.shape == (2, 96000)
    # The tone is 440 Hz at amplitude 0.5; AAC keeps both.
    spectrum = np.abs(np.fft.rfft(pcm[0, 24000:72000]))
    assert np.argmax(spectrum) * 48000 / 48000 == pytest.approx(440, abs=2)  # bin width 1 Hz
    assert 0.4 < np.abs(pcm[0, 24000:72000]).max() < 0.6
    low = ref.audio(sample_rate=16000)
    assert low is not None and low.shape == (2, 32000)


def test_no_audio_is_none(media: dict[str, Path]) -> None:
    assert reference(media["mp4"]).audio() is None
    assert reference(media["png"]).audio() is None


def test_a_file_broken_after_the_probe_fails_with_a_media_error(media: dict[str, Path], tmp_path: Path) -> None:
    # References built by hand around files that changed since the probe: decoding must say
    # so, with the reference's number, and not crash.
    video = Reference(2, "http://example.test/a.mp4", "video", MP4, media["text"], 320, 240, duration=2.0, fps=10.0)
    with pytest.raises(MediaError, match=r"^reference 2: the video is broken or truncated") as info:
        list(video.frames(10))
    assert info.value.code == "InvalidParameter"
    assert str(media["text"].parent) not in info.value.message  # no server paths for clients
    assert isinstance(info.value.__cause__, av.error.FFmpegError)

    whole = media["png"].read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    image = Reference(3, "http://example.test/cut.png", "image", PNG, tmp_path / "cut.png", 320, 240)
    with pytest.raises(MediaError, match=r"^reference 3: the image is broken or truncated"):
        image.image()
