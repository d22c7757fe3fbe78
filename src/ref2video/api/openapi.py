"""What the OpenAPI document says of each route beyond its Python signature: the answers it
can give, its query parameters and headers, and its bodies. Routes parse their input
themselves (to answer with the provider's codes and messages), so FastAPI cannot see these;
they are written down here once, and the schema-fuzzing test holds the server to them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .schemas import ErrorBody

__all__ = ["errors", "BEARER", "SECURITY", "LIST_PARAMETERS", "NATIVE_CREATE", "GATEWAY_CREATE", "form_body",
           "json_body", "VIDEO", "VIDEO_PART", "RANGE_PAST_END", "merged"]

BEARER = {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key: r2v-<id>-<secret>"}}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]

_WHY = {
    400: "a field breaks a rule (InvalidParameter, InvalidURL, UnsupportedOperation)",
    401: "no key, or an unknown or revoked one (InvalidApiKey)",
    403: "refused (AccessDenied)",
    404: "no such model or resource (ModelNotFound, NotFound)",
    413: "the body is too large (RequestTooLarge)",
    429: "a rate limit or the unfinished-task quota (Throttling.RateQuota); see Retry-After and RateLimit-*",
    500: "a fault of the server, never of the input (InternalError)",
    503: "the database is away for now (ServiceUnavailable); see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The provider's error envelope for each of `codes`, and for 500 and 503, which any route
    that reaches the database can answer."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in (*codes, 500, 503)}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


LIST_PARAMETERS: dict[str, Any] = {"parameters": [
    _query("page_no", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "the page, from 1"),
    _query("page_size", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "tasks per page"),
    _query("start_time", {"type": "string", "pattern": "^[0-9]{14}$"},
           "YYYYMMDDhhmmss in the server's zone (Beijing time by default): tasks submitted from then"),
    _query("end_time", {"type": "string", "pattern": "^[0-9]{14}$"}, "YYYYMMDDhhmmss: tasks submitted until then"),
    _query("model_name", {"type": "string"}, "only this model's tasks"),
    _query("status", {"type": "string"}, "PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED; several comma-separated"),
    _query("task_id_prefix", {"type": "string"},
           "a ref2video extension: only the tasks whose id starts with this (exact case);"
           " the provider has no such filter"),
]}

_CREATE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateBody"}}},
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    "description": "a ref2video extension: the same key with the same body within 24 hours answers the "
                   "task the first request made; with another body, 400 InvalidParameter (docs/limits.md)",
}
_CALLBACK = {
    "name": "X-Ref2video-Callback", "in": "header", "required": False,
    "schema": {"type": "string", "maxLength": 2048, "pattern": "^https?://[\\x21-\\x7e]+$"},
    "description": "a ref2video extension: an absolute http(s) URL, without credentials, that gets this task's "
                   "events, signed, beside the owner's endpoints (docs/webhooks.md); anything else is "
                   "400 InvalidParameter and no task is made",
}
GATEWAY_CREATE: dict[str, Any] = {"requestBody": _CREATE_BODY, "security": SECURITY,
                                  "parameters": [_IDEMPOTENCY_KEY, _CALLBACK]}
NATIVE_CREATE: dict[str, Any] = {
    "requestBody": _CREATE_BODY,
    "security": SECURITY,
    "parameters": [{
        "name": "X-DashScope-Async", "in": "header", "required": True,
        "schema": {"type": "string", "enum": ["enable"]},
        "description": "the provider's asynchronous mode; without it the answer is 403 AccessDenied",
    }, {
        "name": "X-DashScope-OssResourceResolve", "in": "header", "required": False,
        "schema": {"type": "string", "enum": ["enable"]},
        "description": "sent by clients whose references include oss:// uploads",
    }, _IDEMPOTENCY_KEY, _CALLBACK],
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
VIDEO: dict[str, Any] = {"content": {"video/mp4": _BINARY}, "description": "the video"}
VIDEO_PART: dict[str, Any] = {"content": {"video/mp4": _BINARY, "multipart/byteranges": _BINARY},
                              "description": "the ranges asked for"}
RANGE_PAST_END: dict[str, Any] = {"description": "the range starts past the end; Content-Range gives the size"}


def form_body(fields: dict[str, str], *, required: list[str]) -> dict[str, Any]:
    """A multipart/form-data request body of string `fields` (name -> description) and `file`."""
    properties: dict[str, Any] = {name: {"type": "string", "description": text} for name, text in fields.items()}
    properties["file"] = {"type": "string", "format": "binary", "description": "the file, last"}
    schema = {"type": "object", "properties": properties, "required": [*required, "file"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A required JSON request body of `model`'s schema, written inline (the route reads the
    body itself, to the same rules)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """One `openapi_extra` of several, their `parameters` lists joined."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = [*out.get(key, []), *value] if key == "parameters" else value
    return out
