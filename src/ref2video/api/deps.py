"""What every route needs from the request: the service, the key, the JSON body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import Request

from ..errors import InvalidApiKey, InvalidParameter, RequestTooLarge
from ..service import Service
from ..app.auth import Authenticator, Principal

__all__ = [
    "service_of", "bearer_key", "principal_of", "read_json", "in_thread", "base_url_of", "is_text", "text_param",
    "declared_length",
]

T = TypeVar("T")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database work off the event loop."""
    return await to_thread.run_sync(fn, *args)


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if not header or scheme.lower() != "bearer" or not key:
        raise InvalidApiKey("No API-key provided.")
    return key


async def principal_of(request: Request) -> Principal:
    """Who the request comes from: authentication happens here and nowhere else."""
    key = bearer_key(request)
    auth = service_of(request).auth
    principal = auth.remembered(key) or await _look_up(auth, key)
    if principal is None:
        raise InvalidApiKey("Invalid API-key provided.")
    return principal


# Keys being read from the database now, by event loop: when a remembered key lapses, the
# requests that present it meanwhile wait for the one read instead of each making its own.
_reading: dict[tuple[asyncio.AbstractEventLoop, Authenticator, str], asyncio.Future[Principal | None]] = {}


async def _look_up(auth: Authenticator, key: str) -> Principal | None:
    where = (asyncio.get_running_loop(), auth, key)
    pending = _reading.get(where)
    if pending is not None:
        return await asyncio.shield(pending)
    pending = _reading[where] = asyncio.get_running_loop().create_future()
    try:
        principal = await in_thread(auth.principal, key)
    except BaseException as exc:
        if isinstance(exc, Exception):
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
        else:
            pending.cancel()
        raise
    else:
        pending.set_result(principal)
        return principal
    finally:
        del _reading[where]


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than `limit` bytes before reading them all, and any
    string that is not text (a NUL, or half of a UTF-16 pair, which no database can store)."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidParameter("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameter(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidParameter("the request body is nested too deeply") from None
    except ValueError as exc:  # a number of thousands of digits: int() refuses it
        raise InvalidParameter(f"the request body holds a number that cannot be read: {str(exc)[:100]}") from None
    # A string can only hold a NUL or half a surrogate pair through a \u escape (raw control
    # characters are not JSON), a surrogate's UTF-8 form (json.loads lets it through; its lead
    # byte is 0xED), or in a UTF-16 or -32 body, whose bytes hold NULs: a body with none of
    # these needs no walk through its strings.
    if (b"\\u" in raw or b"\x00" in raw or b"\xed" in raw) and (where := _not_text(body)) is not None:
        raise InvalidParameter(f"{where} holds a NUL character or an unpaired surrogate, which is not text")
    return body


def is_text(value: str) -> bool:
    """Storable text: no NUL, and valid Unicode (JSON's `\\ud800` escapes can make half a pair)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_param(request: Request, name: str) -> str | None:
    """A query parameter, refused (InvalidParameter) when it is not text."""
    value = request.query_params.get(name)
    if value is not None and not is_text(value):
        raise InvalidParameter(f"{name} holds a NUL character or an unpaired surrogate, which is not text")
    return value


def declared_length(request: Request) -> int | None:
    """The Content-Length header as a number, or None when absent or not one (only ASCII digits
    count: `str.isdigit` also takes "²")."""
    value = request.headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


def _not_text(body: Any) -> str | None:
    """The path of the first string (or key) in `body` that is not text, or None."""
    stack: list[tuple[str, Any]] = [("the request body", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not is_text(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if not is_text(key):
                    return f"a key in {path}"
                stack.append((key if path == "the request body" else f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


def base_url_of(request: Request) -> str:
    configured = service_of(request).settings.public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")
