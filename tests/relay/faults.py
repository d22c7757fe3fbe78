"""A loopback HTTP server that plays a misbehaving provider: it answers each request with the
next scripted `Fault` (a status with the provider's envelope or any body, a dropped connection,
an answer held past the client's timeout, a body cut short), and with `default` once the script
runs out."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 429: "Throttling.RateQuota", 500: "InternalError",
          503: "ServiceUnavailable"}
# A task answer that any query, submit or cancel can take as good.
OK_TASK = json.dumps({"request_id": "r", "output": {"task_id": "t-1", "task_status": "RUNNING"}}).encode()


@dataclass
class Fault:
    """One scripted answer. `body=None` sends the provider's error envelope for `status`."""

    status: int = 200
    body: bytes | None = OK_TASK
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False  # close the connection without a word
    hold: float = 0.0  # seconds to wait before answering (cut short when the server closes)
    cut: bool = False  # declare the full length, send half, close


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    at: float


class FaultServer:
    """Answers from `script` while it lasts, then with `default`; records every request."""

    def __init__(self) -> None:
        self.script: deque[Fault] = deque()
        self.default = Fault()
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends every hold, so that none outlives its test
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def then(self, *faults: Fault) -> FaultServer:
        self.script.extend(faults)
        return self

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, hit: Hit) -> Fault:
        with self._lock:
            self.hits.append(hit)
            return self.script.popleft() if self.script else self.default


def _handler(server: FaultServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            fault = server._next(Hit(self.command, self.path, headers, time.monotonic()))
            server._closing.wait(fault.hold)
            with contextlib.suppress(OSError):  # the client gave up first, as some tests intend
                self._answer(fault)

        def _answer(self, fault: Fault) -> None:
            self.close_connection = True
            if fault.drop:
                return
            body = fault.body if fault.body is not None else json.dumps({
                "request_id": "fault", "code": _CODES.get(fault.status, "Error"),
                "message": f"scripted {fault.status}"}).encode()
            self.send_response(fault.status)
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", fault.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if fault.cut else body)
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
