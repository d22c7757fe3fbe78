"""A loopback HTTP server that misbehaves on cue: it answers the next requests from a script
(an error status, a Retry-After, a dropped connection), then forwards the rest to a real server."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 404: "ModelNotFound", 429: "Throttling.RateQuota",
          500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable"}
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "content-encoding", "keep-alive"}


@dataclass
class Plan:
    """One scripted answer: a status with the provider's envelope (or `body`), or a dropped connection."""

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    drop: bool = False


class FlakyServer:
    """Answers from `plan` while it lasts, then forwards to `upstream` (or answers 599 without one)."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.plan: deque[Plan] = deque()
        self.hits: list[tuple[str, str]] = []
        # Hold each request until this many have been held at once (20 s at most); 0: no hold.
        self.together = 0
        self.in_flight = 0
        self.most_in_flight = 0  # how many requests were being held at once, at most
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def then(self, status: int = 503, *, retry_after: str | None = None, body: bytes | None = None,
             drop: bool = False, times: int = 1) -> FlakyServer:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.plan.extend(Plan(status, headers, body, drop) for _ in range(times))
        return self

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.hits if (method is None or m == method) and p.startswith(path_prefix))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        with self._changed:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.most_in_flight >= self.together, timeout=20)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def _next(self, method: str, path: str) -> Plan | None:
        with self._lock:
            self.hits.append((method, path))
            return self.plan.popleft() if self.plan else None


def _handler(server: FlakyServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            plan = server._next(self.command, self.path)
            with server._hold():
                self._act(plan, body)

        def _act(self, plan: Plan | None, body: bytes) -> None:
            if plan is None:
                self._forward(body)
            elif plan.drop:
                self.close_connection = True  # no answer at all: the client sees the connection end
            else:
                envelope = {"request_id": f"flaky-{len(server.hits)}", "code": _CODES.get(plan.status, "Error"),
                            "message": f"scripted {plan.status}"}
                self._answer(plan.status, plan.headers, plan.body if plan.body is not None
                             else json.dumps(envelope).encode(), "application/json")

        def _forward(self, body: bytes) -> None:
            if server.upstream is None:
                self._answer(599, {}, b"no upstream", "text/plain")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            r = httpx.request(self.command, server.upstream + self.path, content=body, headers=headers, timeout=30)
            relayed = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-type"}}
            self._answer(r.status_code, relayed, r.content, r.headers.get("content-type", ""))

        def _answer(self, status: int, headers: dict[str, str], body: bytes, kind: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
