"""The provider's vocabulary: states, sizes, limits and the time format (PROTOCOL.md)."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

__all__ = [
    "Status",
    "TERMINAL",
    "SIZES",
    "DEFAULT_MODELS",
    "MAX_PROMPT",
    "MAX_NEGATIVE_PROMPT",
    "MAX_REFERENCES",
    "MAX_IMAGES",
    "MAX_VIDEOS",
    "MAX_SEED",
    "MIN_DURATION",
    "MAX_DURATION",
    "MAX_BILLED_INPUT_SECONDS",
    "MAX_IMAGE_BYTES",
    "MAX_VIDEO_BYTES",
    "MAX_UPLOAD_BYTES",
    "tier_of",
    "format_time",
]


class Status(str, enum.Enum):
    """Task states, spelled as the wire spells them, from the table to the client."""

    PENDING = "PENDING"  # accepted, waiting for a worker
    RUNNING = "RUNNING"  # claimed by a worker holding a lease
    SUCCEEDED = "SUCCEEDED"  # the video is stored and usage recorded
    FAILED = "FAILED"  # output.code / output.message say why
    CANCELED = "CANCELED"  # canceled by its owner before it finished
    UNKNOWN = "UNKNOWN"  # never stored: unknown, someone else's, or past retention


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})

# Output sizes by tier; the tier is the `SR` reported in usage.
SIZES: dict[str, int] = {
    **dict.fromkeys(["1280*720", "720*1280", "960*960", "1088*832", "832*1088"], 720),
    **dict.fromkeys(["1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"], 1080),
}

DEFAULT_MODELS = ("wan2.6-r2v", "wan2.6-r2v-flash")
MAX_PROMPT = 1500
MAX_NEGATIVE_PROMPT = 500
MAX_REFERENCES = 5
MAX_IMAGES = 5
MAX_VIDEOS = 3
MAX_SEED = 2_147_483_647
MIN_DURATION, MAX_DURATION = 2, 10
MAX_BILLED_INPUT_SECONDS = 5
MAX_IMAGE_BYTES = 20 << 20
MAX_VIDEO_BYTES = 100 << 20
MAX_UPLOAD_BYTES = MAX_VIDEO_BYTES  # the kind is known only once the bytes are sniffed


def tier_of(size: str) -> int:
    """The resolution tier (720 or 1080) of an allowed size."""
    return SIZES[size]


def format_time(epoch_ms: int | None, tz: ZoneInfo | timezone = timezone.utc) -> str | None:
    """`YYYY-MM-DD HH:mm:ss.SSS`, the provider's time format."""
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
