"""The outermost middleware: each request's latency by route template, and, with
`log_requests` on, one log line for it (off by default: at thousands of requests a second the
line costs more than the rest of the middleware, and a proxy in front usually keeps the access
log already).

The route is the path template FastAPI matched (`/api/v1/tasks/{task_id}`), never the raw path,
so the series stay bounded however many tasks there are; a path that matched no route is
`unmatched`. It runs outside `RequestGuard` so it sees the guard's own 500 and 503 answers, and
it gives each request its id, which the guard and every log line then use.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..logs import REQUEST_ID

__all__ = ["RequestMetrics", "route_of"]

log = logging.getLogger("ref2video.http")


def route_of(scope: Scope) -> str:
    """The path template of the route that answered, or "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class RequestMetrics:
    """ASGI middleware: `app.add_middleware(RequestMetrics)` after every other one."""

    def __init__(self, app: ASGIApp, *, log_lines: bool = False) -> None:
        self.app = app
        self.log_lines = log_lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before answering

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            elapsed = time.perf_counter() - started
            route, method = route_of(scope), str(scope.get("method", ""))
            metrics.HTTP_DURATION.labels(method=method, route=route, status=str(status)).observe(elapsed)
            if self.log_lines and log.isEnabledFor(logging.INFO):
                log.info("%s %s %d %.1f ms", method, route, status, elapsed * 1000, extra={"fields": {
                    "event": "request", "method": method, "route": route, "path": scope.get("path", "")[:200],
                    "status": status, "duration_ms": round(elapsed * 1000, 2)}})
            REQUEST_ID.reset(token)
