"""The outermost layer of every request: its id, and what happens when something breaks.

- Every request gets an id (`errors.request_id()`): the `request_id` of its answer, success or
  error, and named in the log lines about it.
- An exception no route handled is answered once, in the provider's envelope, with a 500
  `InternalError` and one logged traceback; the connection stays open. (Starlette's own last
  resort re-raises to the server, which logs the traceback a second time and drops the
  client's keep-alive connection.)
- A database that does not answer (refused, lost, timed out, no pooled connection free, SQLite
  locked or full) is a 503 `ServiceUnavailable` with `Retry-After`, which clients retry,
  logged as one line without a traceback. So is a full disk (ENOSPC, EDQUOT) met while a
  request writes a file (an upload's scratch copy, say).
"""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ApiError, InternalError, ServiceUnavailable
from ..storage.base import disk_full
from ..store.db import unavailable
from .errors import REQUEST_ID, error_response

__all__ = ["RequestGuard"]

log = logging.getLogger("ref2video.api")


class RequestGuard:
    """ASGI middleware: `app.add_middleware(RequestGuard)`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = REQUEST_ID.get() or str(uuid.uuid4())  # given by RequestMetrics (metrics.py), outside
        token = REQUEST_ID.set(rid)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # the last resort: nothing below handled it
            error: ApiError
            if unavailable(exc):
                log.warning("request %s: %s %s: the database is not answering (%s)", rid, scope["method"],
                            scope["path"][:200], type(exc).__name__)
                error = ServiceUnavailable("the database is not answering; please try again shortly")
            elif disk_full(exc):
                log.warning("request %s: %s %s: the disk is full", rid, scope["method"], scope["path"][:200])
                error = ServiceUnavailable("the server's disk is full; please try again shortly")
            else:
                log.error("request %s: %s %s failed", rid, scope["method"], scope["path"][:200], exc_info=exc)
                error = InternalError()
            if not started:  # else the answer is half sent: the server closes the connection
                await error_response(error)(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)
