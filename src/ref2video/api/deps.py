"""What every route needs from the request: the service, the key, the JSON body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import Request

from ..errors import InvalidApiKey, InvalidParameter, RequestTooLarge
from ..service import Service
from ..store.keys import Principal, authenticate

__all__ = ["service_of", "bearer_key", "principal_of", "read_json", "in_thread", "base_url_of"]

T = TypeVar("T")


def service_of(request: Request) -> Service:
    return request.app.state.service


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
    key = bearer_key(request)
    principal = await in_thread(authenticate, service_of(request).db, key)
    if principal is None:
        raise InvalidApiKey("Invalid API-key provided.")
    return principal


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
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
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameter(f"the request body is not valid JSON: {exc}") from None


def base_url_of(request: Request) -> str:
    configured = service_of(request).settings.public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")
