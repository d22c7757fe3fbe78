"""media/probe.py: sizes and durations from headers, checked against the limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ref2video.errors import MediaError
from ref2video.media.probe import ImageInfo, Limits, VideoInfo, probe, probe_image, probe_video
from ref2video.media.sniff import JPEG, MOV, MP4, PNG

from .media_files import make_exif_jpeg, make_image, png_header_only


@pytest.mark.parametrize("name", ["jpeg", "png", "bmp", "webp"])
def test_images_are_measured(media: dict[str, Path], name: str) -> None:
    info = probe(media[name])
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height) == (320, 240)
    assert not info.has_alpha


def test_alpha_is_noticed(media: dict[str, Path]) -> None:
    info = probe(media["rgba.png"])
    assert isinstance(info, ImageInfo) and info.has_alpha and info.mode == "RGBA"


def test_a_small_image_is_refused(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError) as info:
        probe(media["small.png"])
    assert info.value.code == "InvalidParameter"
    assert info.value.message == "the image is 120x90 px, below 240 px per side"


def test_a_large_image_is_refused_from_its_header(tmp_path: Path) -> None:
    # The body is one empty row: decoding it would fail as broken, so refusing it as too
    # large shows the check came from the header alone.
    path = tmp_path / "wide.png"
    path.write_bytes(png_header_only(8001, 300))
    with pytest.raises(MediaError, match="the image is 8001x300 px, above 8000 px per side"):
        probe_image(path, PNG)


def test_a_decompression_bomb_is_refused_before_decoding(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="too many pixels") as info:
        probe(media["bomb.png"])
    assert info.value.code == "InvalidParameter"
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_limits_are_settings(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png", "PNG", size=(300, 300))
    with pytest.raises(MediaError, match="below 400 px"):
        probe(path, limits=Limits(min_side=400))


def test_exif_orientation_swaps_the_sides(tmp_path: Path) -> None:
    turned = probe(make_exif_jpeg(tmp_path / "turned.jpg", (300, 260), orientation=6))
    upright = probe(make_exif_jpeg(tmp_path / "upright.jpg", (300, 260), orientation=1))
    assert (turned.width, turned.height) == (260, 300)
    assert (upright.width, upright.height) == (300, 260)


def test_a_truncated_png_is_broken(media: dict[str, Path], tmp_path: Path) -> None:
    whole = media["png"].read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) - 30])
    with pytest.raises(MediaError, match="the image is broken or truncated"):
        probe_image(path, PNG)


def test_an_image_is_opened_only_by_its_sniffed_decoder(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="broken"):
        probe_image(media["png"], JPEG)  # a PNG may not be parsed as anything else


@pytest.mark.parametrize(
    ("name", "fmt", "audio"),
    [
        ("mp4", MP4, False),
        ("mp4+aac", MP4, True),
        ("mov", MOV, False),
        ("mov+aac", MOV, True),
        ("faststart.mp4", MP4, True),
    ],
)
def test_videos_are_measured(media: dict[str, Path], name: str, fmt: object, audio: bool) -> None:
    info = probe(media[name])
    assert isinstance(info, VideoInfo)
    assert info.format == fmt
    assert (info.width, info.height) == (320, 240)
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert info.fps == pytest.approx(10.0)
    assert info.frames == 20
    assert info.has_audio is audio


def test_a_long_video_is_refused(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError) as info:
        probe(media["long.mp4"])
    assert info.value.message == "the video is 31 s long, above 30 s"


def test_a_short_video_is_refused(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="the video is 0.5 s long, below 1 s"):
        probe(media["short.mp4"])


def test_a_video_without_its_index_is_broken(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="the video is broken or truncated") as info:
        probe_video(media["truncated.mp4"], MP4)
    assert info.value.code == "InvalidParameter"


def test_a_video_cut_short_is_truncated(media: dict[str, Path]) -> None:
    # Its index is at the front and promises more than the file holds.
    with pytest.raises(MediaError, match="the video is truncated"):
        probe_video(media["cut.mp4"], MP4)


def test_garbage_after_a_video_signature_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"\0\0\0\x18ftypisom\0\0\2\0isomiso2" + bytes(range(256)) * 40)
    with pytest.raises(MediaError, match="broken"):
        probe(path)


def test_an_unsupported_file_is_refused(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="unsupported format"):
        probe(media["text"])
