"""The format of a reference, from its first bytes (never from its Content-Type or name).

Only the formats the protocol accepts are recognised: JPEG, PNG, BMP and WEBP images, MP4 and
MOV videos (docs/protocol.md §2), and WAV and MP3 for the media form's voices (§3).
Both videos are ISO base media files that open with an `ftyp` box; its
major brand `qt  ` marks QuickTime (MOV), the MP4 brands mark MP4. HEIF and AVIF images use
the same box layout with their own brands and are refused, as is everything else.

    fmt = sniff(path.read_bytes()[:SNIFF_BYTES])
    if fmt is None: ...  # unsupported
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Literal

__all__ = [
    "Kind", "Format", "JPEG", "PNG", "BMP", "WEBP", "MP4", "MOV", "WAV", "MP3", "FORMATS", "SNIFF_BYTES",
    "sniff", "refusal",
]

Kind = Literal["image", "video", "audio"]

# Enough for every signature below, including an `ftyp` box with a few compatible brands.
SNIFF_BYTES = 64


@dataclasses.dataclass(frozen=True)
class Format:
    """A supported format: its name, kind, file extension, and the decoder that may open it."""

    name: str
    kind: Kind
    extension: str
    decoder: str  # the Pillow plugin or FFmpeg demuxer allowed to parse these bytes


JPEG = Format("jpeg", "image", "jpg", "JPEG")
PNG = Format("png", "image", "png", "PNG")
BMP = Format("bmp", "image", "bmp", "BMP")
WEBP = Format("webp", "image", "webp", "WEBP")
MP4 = Format("mp4", "video", "mp4", "mov")  # FFmpeg's one ISO-BMFF demuxer is named "mov"
MOV = Format("mov", "video", "mov", "mov")
WAV = Format("wav", "audio", "wav", "wav")
MP3 = Format("mp3", "audio", "mp3", "mp3")
FORMATS = (JPEG, PNG, BMP, WEBP, MP4, MOV, WAV, MP3)

# What each expectation accepts; None is a reference of either kind (the urls form).
_WANTED: dict[Kind | None, str] = {
    None: "a JPEG, PNG, BMP or WEBP image, nor an MP4 or MOV video",
    "image": "a JPEG, PNG, BMP or WEBP image",
    "video": "an MP4 or MOV video",
    "audio": "a WAV or MP3 file",
}

_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9",
     b"mp41", b"mp42", b"mp71", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"dash", b"msnv",
     b"f4v ", b"XAVC", b"MSNV", b"NDAS", b"mmp4"}
)  # fmt: skip
# Still-image brands of ISO-BMFF (HEIF, AVIF): they may list `iso8` too, so they win.
_IMAGE_BRANDS = frozenset({b"mif1", b"msf1", b"heic", b"heix", b"heim", b"heis", b"hevc", b"avif", b"avis"})
# QuickTime files older than `ftyp` open straight with one of these atoms.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
# A real BMP names its info header by size; "BM" alone is too weak a signature.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff(head: bytes) -> Format | None:
    """The format of a file that starts with `head` (at least SNIFF_BYTES when available)."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head[:3] == b"ID3" or _mpeg_audio_frame(head):
        return MP3
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return BMP
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if head[4:8] in _QUICKTIME_ATOMS and struct.unpack_from(">I", head)[0] >= 8:
        return MOV
    return None


def _sniff_ftyp(head: bytes) -> Format | None:
    box_size = struct.unpack_from(">I", head)[0]
    major = head[8:12]
    end = min(box_size, len(head)) if box_size >= 16 else 16
    compatible = {head[i : i + 4] for i in range(16, end - 3, 4)}
    if major == b"qt  ":
        return MOV
    if major in _MP4_BRANDS:
        return MP4
    if major in _IMAGE_BRANDS or compatible & _IMAGE_BRANDS:
        return None
    if b"qt  " in compatible:
        return MOV
    if compatible & _MP4_BRANDS:
        return MP4
    return None


def refusal(fmt: Format | None, kind_hint: Kind | None) -> str | None:
    """Why a file of `fmt` cannot be used where a `kind_hint` is wanted (None: an image or a
    video, as a reference of the urls form is), or None when it can."""
    if fmt is None:
        return f"unsupported format: not {_WANTED[kind_hint]}"
    if kind_hint is None and fmt.kind == "audio":
        return f"unsupported format: a {fmt.name.upper()} audio file is not {_WANTED[None]}"
    if kind_hint is not None and fmt.kind != kind_hint:
        return f"expected {_A[kind_hint]}, got a {fmt.name.upper()} {fmt.kind}"
    return None


_A = {"image": "an image", "video": "a video", "audio": "a voice recording (WAV or MP3)"}


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, a known version and layer (ADTS AAC, which
    shares the sync, has layer 0), a bitrate index that is neither free nor bad."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate = (head[1] >> 3) & 3, (head[1] >> 1) & 3, head[2] >> 4
    return version != 1 and layer != 0 and bitrate not in (0, 15)
