"""The create body, checked field by field into a `TaskSpec` (PROTOCOL.md section 2).

Only the checks that need no download happen here; what needs the file (format, pixels,
seconds, bytes) happens when the references are fetched.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import protocol as p
from .errors import InvalidParameter, InvalidURL, ModelNotFound

__all__ = ["TaskSpec", "parse_spec", "reference_kind", "oss_key"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_VIDEO_SUFFIXES = (".mp4", ".mov")
_MAX_URL = 4096


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A create request that passed every check; what the queue stores and engines read."""

    model: str
    prompt: str
    reference_urls: tuple[str, ...]
    negative_prompt: str | None = None
    size: str = "1920*1080"
    duration: int = 5
    shot_type: str = "single"
    audio: bool = True
    watermark: bool = False
    seed: int = 0
    videos_only: bool = False  # the references came as the deprecated reference_video_urls

    @property
    def width(self) -> int:
        return int(self.size.split("*")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("*")[1])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["reference_urls"] = list(self.reference_urls)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["reference_urls"] = tuple(values["reference_urls"])
        return cls(**values)


def oss_key(url: str) -> str:
    """The key of an `oss://<key>` reference ('' for anything else)."""
    return url[len("oss://"):].strip("/") if url.startswith("oss://") else ""


def reference_kind(url: str) -> str | None:
    """'image' or 'video' as the URL's path suggests, None when it does not say."""
    path = urlsplit(url).path.lower()
    if path.endswith(_IMAGE_SUFFIXES):
        return "image"
    if path.endswith(_VIDEO_SUFFIXES):
        return "video"
    return None


def parse_spec(body: Any, models: Collection[str]) -> TaskSpec:
    """Check a decoded JSON body; raise the provider's error naming the field."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    model = _required_str(body, "model", "model")
    if model not in models:
        raise ModelNotFound(f"Model not exist: {model!r} is not served here")
    inputs = _object(body, "input", required=True)
    params = _object(body, "parameters", required=False)

    prompt = _required_str(inputs, "prompt", "input.prompt")
    if not prompt.strip():
        raise InvalidParameter("input.prompt must not be empty")
    negative = _optional(inputs, "negative_prompt", str, "input.negative_prompt", "a string")
    urls = _references(inputs)
    videos_only = inputs.get("reference_urls") is None

    size = _optional(params, "size", str, "parameters.size", "a string like \"1280*720\"")
    if size is not None and size not in p.SIZES:
        raise InvalidParameter(
            f"parameters.size {size!r} is not supported; use one of {', '.join(p.SIZES)}"
        )
    duration = _integer(params, "duration", "parameters.duration", p.MIN_DURATION, p.MAX_DURATION)
    shot = _optional(params, "shot_type", str, "parameters.shot_type", "a string")
    if shot is not None and shot not in ("single", "multi"):
        raise InvalidParameter(f"parameters.shot_type must be 'single' or 'multi', not {shot!r}")
    audio = _optional(params, "audio", bool, "parameters.audio", "a boolean")
    watermark = _optional(params, "watermark", bool, "parameters.watermark", "a boolean")
    seed = _integer(params, "seed", "parameters.seed", 0, p.MAX_SEED)

    return TaskSpec(
        model=model,
        prompt=prompt[: p.MAX_PROMPT],
        negative_prompt=negative[: p.MAX_NEGATIVE_PROMPT] if negative else None,
        reference_urls=urls,
        size=size or "1920*1080",
        duration=5 if duration is None else duration,
        shot_type=shot or "single",
        # wan2.6-r2v always has sound; `audio: false` is accepted there and has no effect.
        audio=True if audio is None or model == "wan2.6-r2v" else audio,
        watermark=bool(watermark),
        seed=secrets.randbelow(p.MAX_SEED + 1) if seed is None else seed,
        videos_only=videos_only,
    )


def _references(inputs: dict[str, Any]) -> tuple[str, ...]:
    field = "input.reference_urls"
    raw = inputs.get("reference_urls")
    if raw is None and inputs.get("reference_video_urls") is not None:
        field, raw = "input.reference_video_urls", inputs["reference_video_urls"]
    if raw is None:
        raise InvalidParameter(f"{field} is required: give 1 to {p.MAX_REFERENCES} reference URLs")
    if not isinstance(raw, list):
        raise InvalidParameter(f"{field} must be an array of URL strings")
    if not 1 <= len(raw) <= p.MAX_REFERENCES:
        raise InvalidParameter(f"{field} must hold 1 to {p.MAX_REFERENCES} URLs, not {len(raw)}")
    kinds = []
    for i, url in enumerate(raw, start=1):
        if not isinstance(url, str) or not url.strip():
            raise InvalidParameter(f"{field}[{i - 1}] must be a non-empty URL string")
        _check_url(url.strip(), i)
        kinds.append(reference_kind(url))
    if field == "input.reference_video_urls" and "image" in kinds:
        raise InvalidParameter(f"{field} takes videos only; put images in input.reference_urls")
    if kinds.count("video") > p.MAX_VIDEOS:
        raise InvalidParameter(f"{field} holds {kinds.count('video')} videos; at most {p.MAX_VIDEOS}")
    return tuple(u.strip() for u in raw)


def _check_url(url: str, index: int) -> None:
    if len(url) > _MAX_URL:
        raise InvalidURL(f"reference {index}: the URL is longer than {_MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidURL(f"reference {index}: the URL has no host: {url[:200]!r}")
        return
    if parts.scheme == "oss":
        if not oss_key(url):
            raise InvalidURL(f"reference {index}: an oss:// URL needs a key after the scheme")
        return  # whether the key is the caller's is checked against the uploads table
    raise InvalidURL(f"reference {index}: only http://, https:// and oss:// URLs are accepted")


def _object(body: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidParameter(f"{key} is required and must be an object")
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"{key} must be an object, not {type(value).__name__}")
    return value


def _required_str(obj: dict[str, Any], key: str, field: str) -> str:
    value = obj.get(key)
    if value is None:
        raise InvalidParameter(f"{field} is required")
    if not isinstance(value, str):
        raise InvalidParameter(f"{field} must be a string, not {_json_type(value)}")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, field: str, what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    # bool is a subclass of int in Python, but not in JSON.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidParameter(f"{field} must be {what}, not {_json_type(value)}")
    return value


def _integer(obj: dict[str, Any], key: str, field: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{field} must be an integer, not {_json_type(value)}")
    if not low <= value <= high:
        raise InvalidParameter(f"{field} must be between {low} and {high}, not {value}")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
