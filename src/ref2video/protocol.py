"""The provider's vocabulary: states, sizes, limits and the time format (docs/protocol.md)."""

from __future__ import annotations

import enum
import functools
from datetime import UTC, datetime, timezone
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
    "MEDIA_MODELS",
    "URLS_MODELS",
    "MEDIA_TYPES",
    "REFERENCE_TYPES",
    "RESOLUTIONS",
    "RATIOS",
    "RATIO_SIZES",
    "MEDIA_MAX_PROMPT",
    "MEDIA_MAX_DURATION",
    "MEDIA_MAX_DURATION_WITH_VIDEO",
    "MAX_VOICE_BYTES",
    "WEBHOOK_EVENTS",
    "tier_of",
    "size_for",
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

# The webhook events (ref2video's own, docs/webhooks.md) and the state each announces; here, not
# in app.outbox, so that the CLI's help can name them without loading the server.
WEBHOOK_EVENTS: dict[Status, str] = {
    Status.RUNNING: "task.running",
    Status.SUCCEEDED: "task.succeeded",
    Status.FAILED: "task.failed",
    Status.CANCELED: "task.canceled",
}

# Output sizes by tier; the tier is the `SR` reported in usage.
SIZES: dict[str, int] = {
    **dict.fromkeys(["1280*720", "720*1280", "960*960", "1088*832", "832*1088"], 720),
    **dict.fromkeys(["1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"], 1080),
}

DEFAULT_MODELS = ("wan2.6-r2v", "wan2.6-r2v-flash", "wan2.7-r2v")
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

# The newer request form (docs/protocol.md §3): `input.media` with `parameters.resolution`
# and `parameters.ratio`, for wan2.7-r2v. The provider's own models take one form each;
# other configured models take either.
MEDIA_MODELS = frozenset({"wan2.7-r2v"})
URLS_MODELS = frozenset({"wan2.6-r2v", "wan2.6-r2v-flash"})
REFERENCE_TYPES = ("reference_image", "reference_video")
MEDIA_TYPES = (*REFERENCE_TYPES, "first_frame")
RESOLUTIONS = {"720P": 720, "1080P": 1080}
RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")
RATIO_SIZES: dict[tuple[str, str], str] = {
    ("720P", "16:9"): "1280*720", ("720P", "9:16"): "720*1280", ("720P", "1:1"): "960*960",
    ("720P", "4:3"): "1104*832", ("720P", "3:4"): "832*1104",
    ("1080P", "16:9"): "1920*1080", ("1080P", "9:16"): "1080*1920", ("1080P", "1:1"): "1440*1440",
    ("1080P", "4:3"): "1648*1248", ("1080P", "3:4"): "1248*1648",
}  # fmt: skip
MEDIA_MAX_PROMPT = 5000
MEDIA_MAX_DURATION = 15  # without a reference video
MEDIA_MAX_DURATION_WITH_VIDEO = 10
MAX_VOICE_BYTES = 15 << 20


def tier_of(size: str) -> int:
    """The resolution tier (720 or 1080) of an allowed size, of either form."""
    if size in SIZES:
        return SIZES[size]
    return next(RESOLUTIONS[res] for (res, _), known in RATIO_SIZES.items() if known == size)


def size_for(resolution: str, ratio: str) -> str:
    """`W*H` of the media form's resolution and ratio."""
    return RATIO_SIZES[(resolution, ratio)]


def format_time(epoch_ms: int | None, tz: ZoneInfo | timezone = UTC) -> str | None:
    """`YYYY-MM-DD HH:mm:ss.SSS`, the provider's time format."""
    if epoch_ms is None:
        return None
    return _formatted(epoch_ms, tz)


@functools.lru_cache(maxsize=8192)
def _formatted(epoch_ms: int, tz: ZoneInfo | timezone) -> str:
    # Cached: a task's times do not change while it is polled, again and again.
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
