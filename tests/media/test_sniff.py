"""media/sniff.py: the format comes from the bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ref2video.media.sniff import BMP, JPEG, MOV, MP3, MP4, PNG, SNIFF_BYTES, WAV, WEBP, Format, refusal, sniff


@pytest.mark.parametrize(
    ("name", "expected"),
    [("jpeg", JPEG), ("png", PNG), ("rgba.png", PNG), ("bmp", BMP), ("webp", WEBP),
     ("mp4", MP4), ("mp4+aac", MP4), ("mov", MOV), ("mov+aac", MOV)],
)  # fmt: skip
def test_real_files_are_recognised(media: dict[str, Path], name: str, expected: Format) -> None:
    assert sniff(media[name].read_bytes()[:SNIFF_BYTES]) == expected


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\2\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0\0\0\x08free"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (ftyp(b"qt  ", b"qt  "), MOV),
        (ftyp(b"isom", b"isom", b"avc1"), MP4),
        (ftyp(b"mp42", b"mp42", b"isom"), MP4),
        (ftyp(b"XYZW", b"XYZW", b"iso6"), MP4),  # unknown major brand, MP4-compatible
        (ftyp(b"XYZW", b"qt  "), MOV),
        (ftyp(b"heic", b"mif1", b"heic"), None),  # HEIF still image
        (ftyp(b"avif", b"avif", b"mif1", b"miaf"), None),  # AVIF still image
        (ftyp(b"mif1", b"mif1", b"iso8"), None),  # an image brand wins over iso8
        (ftyp(b"XYZW", b"XYZW"), None),
        (b"\0\0\0\x08wide\0\0\0\x10mdat", MOV),  # QuickTime before ftyp existed
        (b"RIFF\x24\0\0\0WAVEfmt ", WAV),  # a voice of the media form
        (b"ID3\x04\0\0\0\0\0\x21", MP3),
        (b"\xff\xfb\x90\x64" + b"\0" * 12, MP3),  # MPEG-1 layer III, 128 kbit/s
        (b"\xff\xf1\x50\x80" + b"\0" * 12, None),  # ADTS AAC shares the sync, not the layer
        (b"\xff\xfb\xf0\x64" + b"\0" * 12, None),  # a bad bitrate index
        (b"BM" + b"\0" * 16, None),  # "BM" without a real info header
        (b"GIF89a" + b"\0" * 20, None),
        (b"%PDF-1.7\n", None),
        (b"#EXTM3U\n#EXT-X-VERSION:3\n", None),  # a playlist must never reach FFmpeg
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"\xff\xd8", None),  # too short for JPEG
        (b"", None),
    ],
)
def test_signatures(head: bytes, expected: Format | None) -> None:
    assert sniff(head) == expected


def test_kinds_and_decoders() -> None:
    assert {f.kind for f in (JPEG, PNG, BMP, WEBP)} == {"image"}
    assert {f.kind for f in (MP4, MOV)} == {"video"}
    assert PNG.decoder == "PNG" and MP4.decoder == MOV.decoder == "mov"


def test_what_each_place_accepts() -> None:
    assert refusal(PNG, None) is None and refusal(MP4, None) is None
    assert refusal(WAV, None) == ("unsupported format: a WAV audio file is not a JPEG, PNG, BMP or WEBP image,"
                                  " nor an MP4 or MOV video")
    assert refusal(MP3, "audio") is None
    assert refusal(PNG, "audio") == "expected a voice recording (WAV or MP3), got a PNG image"
    assert refusal(MP4, "image") == "expected an image, got a MP4 video"
    assert refusal(None, "audio") == "unsupported format: not a WAV or MP3 file"
