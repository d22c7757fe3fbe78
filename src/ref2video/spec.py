"""The create body, checked field by field into a `TaskSpec` (docs/protocol.md §2-3).

Only the checks that need no download happen here; what needs the file (format, pixels,
seconds, bytes) happens when the references are fetched.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import protocol as p
from .errors import InvalidParameter, InvalidURL, ModelNotFound, clip

__all__ = ["TaskSpec", "MediaItem", "parse_spec", "reference_kind", "oss_key"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_VIDEO_SUFFIXES = (".mp4", ".mov")
_MAX_URL = 4096


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One item of the media form's `input.media`: a reference (named in the prompt) or the
    first frame, with the optional voice its subject speaks in."""

    type: str  # reference_image, reference_video or first_frame
    url: str
    reference_voice: str | None = None

    @property
    def is_reference(self) -> bool:
        return self.type in p.REFERENCE_TYPES


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A create request that passed every check; what the queue stores and engines read.

    Both request forms land here. `reference_urls` is always the references in the order the
    prompt numbers them; the media form (`form == "media"`) also keeps its items, the first
    frame and the voices in `media`, and its `resolution` and `ratio`, from which `size` is.
    """

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
    form: str = "urls"  # "urls": input.reference_urls and parameters.size; "media": input.media
    media: tuple[MediaItem, ...] = ()
    resolution: str | None = None
    ratio: str | None = None
    prompt_extend: bool = True

    @property
    def width(self) -> int:
        return int(self.size.split("*")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("*")[1])

    @property
    def references(self) -> tuple[MediaItem, ...]:
        """The references as items, in prompt order (for the urls form, of unknown kind)."""
        if self.form == "media":
            return tuple(item for item in self.media if item.is_reference)
        return tuple(MediaItem("reference", url) for url in self.reference_urls)

    @property
    def first_frame(self) -> str | None:
        return next((item.url for item in self.media if item.type == "first_frame"), None)

    @property
    def voices(self) -> dict[int, str]:
        """Reference number (1-based, prompt order) -> the URL of the voice it speaks in."""
        return {i: item.reference_voice for i, item in enumerate(self.references, 1) if item.reference_voice}

    @property
    def all_urls(self) -> list[tuple[str, str]]:
        """(what, url) of every file the task is made from, as messages name them."""
        if self.form != "media":
            return [(f"reference {i}", url) for i, url in enumerate(self.reference_urls, 1)]
        found = []
        for i, item in enumerate(self.media):
            found.append((f"input.media[{i}].url", item.url))
            if item.reference_voice:
                found.append((f"input.media[{i}].reference_voice", item.reference_voice))
        return found

    def fitted_to(self, width: int, height: int) -> TaskSpec:
        """The media form with a first frame: the ratio nearest the frame's, at the same
        resolution (the provider ignores `ratio` then and follows the frame)."""
        if self.form != "media" or self.resolution is None:
            return self
        aspect = math.log(width / height)
        ratio = min(p.RATIOS, key=lambda r: abs(math.log(_ratio_value(r)) - aspect))
        return dataclasses.replace(self, ratio=ratio, size=p.size_for(self.resolution, ratio))

    def to_json(self) -> dict[str, Any]:
        # What dataclasses.asdict gives (every field, values being str, int, bool or None),
        # without its deep copies: this runs for every create.
        data = {name: getattr(self, name) for name in _SPEC_FIELDS}
        data["reference_urls"] = list(self.reference_urls)
        data["media"] = [{name: getattr(item, name) for name in _MEDIA_FIELDS} for item in self.media]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["reference_urls"] = tuple(values["reference_urls"])
        values["media"] = tuple(MediaItem(**item) for item in values.get("media") or ())
        return cls(**values)

    def prompt_with_character_names(self) -> str:
        """The prompt with the media form's names for references (Image 1, 图1, Video 2, 视频2,
        and 参考图片 or 参考视频 when there is one) written as `characterN`, N counting all
        references in order: the one vocabulary engines read. The urls form is returned as it is."""
        if self.form != "media":
            return self.prompt
        numbers: dict[tuple[str, int], int] = {}
        seen = {"image": 0, "video": 0}
        for n, item in enumerate(self.references, 1):
            kind = "image" if item.type == "reference_image" else "video"
            seen[kind] += 1
            numbers[(kind, seen[kind])] = n

        def rename(match: re.Match[str]) -> str:
            kind = "image" if match.group("image") else "video"
            n = numbers.get((kind, int(match.group("n"))))
            return f"character{n}" if n else match.group(0)

        text = _MEDIA_MENTION.sub(rename, self.prompt)
        for kind, word in (("image", "参考图片"), ("video", "参考视频")):
            if seen[kind] == 1 and len(numbers) == 1:
                text = text.replace(word, f"character{numbers[(kind, 1)]}")
        return text


# "Image 1", "image1", "Video 2", "图1", "图片 1", "视频2": the media form's separate counters.
_MEDIA_MENTION = re.compile(
    r"(?:(?P<image>\b[Ii]mage\s*|图片\s*|图\s*)|(?P<video>\b[Vv]ideo\s*|视频\s*))(?P<n>\d+)"
)


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSpec))
_MEDIA_FIELDS = tuple(f.name for f in dataclasses.fields(MediaItem))


def _ratio_value(ratio: str) -> float:
    w, h = ratio.split(":")
    return int(w) / int(h)


def oss_key(url: str) -> str:
    """The key of an `oss://<key>` reference ('' for anything else)."""
    return url[len("oss://"):].strip("/") if url.startswith("oss://") else ""


def reference_kind(url: str) -> str | None:
    """'image' or 'video' as the URL's path suggests, None when it does not say."""
    path = urlsplit(url).path.lower()
    if path.endswith(IMAGE_SUFFIXES):
        return "image"
    if path.endswith(_VIDEO_SUFFIXES):
        return "video"
    return None


def parse_spec(body: Any, models: Collection[str], *, upstream: Mapping[str, str] | None = None) -> TaskSpec:
    """Check a decoded JSON body, of either request form; raise the provider's error naming
    the field. `upstream` names the provider's model behind each relayed model: a model
    relayed as one of the provider's takes that model's form."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    model = _required_str(body, "model", "model")
    if model not in models:
        raise ModelNotFound(f"Model not exist: {clip(model)} is not served here")
    inputs = _object(body, "input", required=True)
    params = _object(body, "parameters", required=False)

    prompt = _required_str(inputs, "prompt", "input.prompt")
    if not prompt.strip():
        raise InvalidParameter("input.prompt must not be empty")
    negative = _optional(inputs, "negative_prompt", str, "input.negative_prompt", "a string")
    watermark = _optional(params, "watermark", bool, "parameters.watermark", "a boolean")
    seed = _integer(params, "seed", "parameters.seed", 0, p.MAX_SEED)
    common = dict(
        model=model,
        negative_prompt=negative[: p.MAX_NEGATIVE_PROMPT] if negative else None,
        watermark=bool(watermark),
        seed=secrets.randbelow(p.MAX_SEED + 1) if seed is None else seed,
    )
    if _form_of(model, (upstream or {}).get(model, model), inputs, params) == "media":
        return _media_spec(prompt, inputs, params, common)
    return _urls_spec(prompt, inputs, params, common)


def _form_of(model: str, theirs: str, inputs: dict[str, Any], params: dict[str, Any]) -> str:
    """"media" or "urls", from the body, held to the form of the provider's model `theirs`
    (`model` itself, unless relayed under another name) and never mixed."""
    given = [name for name in ("reference_urls", "reference_video_urls") if inputs.get(name) is not None]
    if inputs.get("media") is not None and given:
        raise InvalidParameter(f"input.media and input.{given[0]} are two request forms; send one of them")
    form = "media" if inputs.get("media") is not None or (not given and theirs in p.MEDIA_MODELS) else "urls"
    named = model if theirs == model else f"{model} (relayed as {theirs})"
    if form == "urls" and theirs in p.MEDIA_MODELS:
        raise InvalidParameter(f"{named} takes input.media (a list of {{type, url}} items), not input.{given[0]}")
    if form == "media" and theirs in p.URLS_MODELS:
        raise InvalidParameter(f"{named} takes input.reference_urls; input.media is the request form of wan2.7-r2v")
    others = ("size",) if form == "media" else ("resolution", "ratio")
    for name in others:
        if params.get(name) is not None:
            hint = ("parameters.resolution and parameters.ratio" if form == "media" else "parameters.size")
            raise InvalidParameter(
                f"parameters.{name} belongs to the other request form;"
                f" with input.{'media' if form == 'media' else 'reference_urls'} give {hint}"
            )
    return form


def _urls_spec(prompt: str, inputs: dict[str, Any], params: dict[str, Any], common: dict[str, Any]) -> TaskSpec:
    urls = _references(inputs)
    size = _optional(params, "size", str, "parameters.size", "a string like \"1280*720\"")
    if size is not None and size not in p.SIZES:
        raise InvalidParameter(
            f"parameters.size {size[:40]!r} is not supported; use one of {', '.join(p.SIZES)}"
        )
    duration = _integer(params, "duration", "parameters.duration", p.MIN_DURATION, p.MAX_DURATION)
    shot = _optional(params, "shot_type", str, "parameters.shot_type", "a string")
    if shot is not None and shot not in ("single", "multi"):
        raise InvalidParameter(f"parameters.shot_type must be 'single' or 'multi', not {shot[:40]!r}")
    audio = _optional(params, "audio", bool, "parameters.audio", "a boolean")
    return TaskSpec(
        **common,
        prompt=prompt[: p.MAX_PROMPT],
        reference_urls=urls,
        size=size or "1920*1080",
        duration=5 if duration is None else duration,
        shot_type=shot or "single",
        # wan2.6-r2v always has sound; `audio: false` is accepted there and has no effect.
        audio=True if audio is None or common["model"] == "wan2.6-r2v" else audio,
        videos_only=inputs.get("reference_urls") is None,
    )


def _media_spec(prompt: str, inputs: dict[str, Any], params: dict[str, Any], common: dict[str, Any]) -> TaskSpec:
    """The media form (wan2.7-r2v): always with sound; shots are what the prompt says."""
    media = _media(inputs.get("media"))
    resolution = _choice(params, "resolution", p.RESOLUTIONS, "1080P")
    ratio = _choice(params, "ratio", p.RATIOS, "16:9")
    with_video = any(item.type == "reference_video" for item in media)
    longest = p.MEDIA_MAX_DURATION_WITH_VIDEO if with_video else p.MEDIA_MAX_DURATION
    try:
        duration = _integer(params, "duration", "parameters.duration", p.MIN_DURATION, longest)
    except InvalidParameter as exc:
        raise InvalidParameter(exc.message + (" (input.media holds a reference_video)" if with_video else "")) from None
    prompt_extend = _optional(params, "prompt_extend", bool, "parameters.prompt_extend", "a boolean")
    prompt = prompt[: p.MEDIA_MAX_PROMPT]
    return TaskSpec(
        **common,
        prompt=prompt,
        reference_urls=tuple(item.url for item in media if item.is_reference),
        size=p.size_for(resolution, ratio),
        duration=5 if duration is None else duration,
        shot_type="multi" if _SHOTS.search(prompt) else "single",
        audio=True,
        form="media",
        media=media,
        resolution=resolution,
        ratio=ratio,
        prompt_extend=True if prompt_extend is None else prompt_extend,
    )


# A prompt that lays out shots ("镜头1 [0-3s]: ...", "Shot 2: ...", "cut to ...") asks for several.
_SHOTS = re.compile(r"镜头\s*\d|\bshot\s*\d|\bcut\s+to\b", re.IGNORECASE)


def _media(raw: Any) -> tuple[MediaItem, ...]:
    if not isinstance(raw, list):
        raise InvalidParameter("input.media must be an array of {type, url} objects")
    items = []
    for i, item in enumerate(raw):
        field = f"input.media[{i}]"
        if not isinstance(item, dict):
            raise InvalidParameter(f"{field} must be an object with type and url, not {_json_type(item)}")
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in p.MEDIA_TYPES:
            shown = repr(kind[:40]) if isinstance(kind, str) else _json_type(kind)
            raise InvalidParameter(f"{field}.type must be one of {', '.join(p.MEDIA_TYPES)}, not {shown}")
        url = item.get("url")
        if not isinstance(url, str) or not url.strip():
            raise InvalidParameter(f"{field}.url must be a non-empty URL string")
        _check_url(url.strip(), f"{field}.url")
        voice = item.get("reference_voice")
        if voice is not None:
            if kind == "first_frame":
                raise InvalidParameter(f"{field}.reference_voice goes with a reference_image or reference_video")
            if not isinstance(voice, str) or not voice.strip():
                raise InvalidParameter(f"{field}.reference_voice must be a non-empty URL string")
            _check_url(voice.strip(), f"{field}.reference_voice")
        items.append(MediaItem(kind, url.strip(), voice.strip() if voice else None))
    references = sum(item.is_reference for item in items)
    if not 1 <= references <= p.MAX_REFERENCES:
        raise InvalidParameter(
            f"input.media must hold 1 to {p.MAX_REFERENCES} reference_image and reference_video items, not {references}"
        )
    if (frames := sum(item.type == "first_frame" for item in items)) > 1:
        raise InvalidParameter(f"input.media holds {frames} first_frame items; at most 1")
    return tuple(items)


def _choice(params: dict[str, Any], key: str, allowed: Collection[str], default: str) -> str:
    value: str | None = _optional(params, key, str, f"parameters.{key}", "a string")
    if value is None:
        return default
    if value not in allowed:
        raise InvalidParameter(f"parameters.{key} must be one of {', '.join(allowed)}, not {value[:40]!r}")
    return value


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
        _check_url(url.strip(), f"reference {i}")
        kinds.append(reference_kind(url))
    if field == "input.reference_video_urls" and "image" in kinds:
        raise InvalidParameter(f"{field} takes videos only; put images in input.reference_urls")
    if kinds.count("video") > p.MAX_VIDEOS:
        raise InvalidParameter(f"{field} holds {kinds.count('video')} videos; at most {p.MAX_VIDEOS}")
    return tuple(u.strip() for u in raw)


def _check_url(url: str, where: str) -> None:
    if len(url) > _MAX_URL:
        raise InvalidURL(f"{where}: the URL is longer than {_MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidURL(f"{where}: the URL has no host: {url[:200]!r}")
        return
    if parts.scheme == "oss":
        if not oss_key(url):
            raise InvalidURL(f"{where}: an oss:// URL needs a key after the scheme")
        return  # whether the key is the caller's is checked against the uploads table
    raise InvalidURL(f"{where}: only http://, https:// and oss:// URLs are accepted")


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
