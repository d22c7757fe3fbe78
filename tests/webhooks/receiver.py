"""A webhook receiver for tests: a real HTTP server on loopback that verifies every delivery's
signature with the `standardwebhooks` library, records it, and answers as the test says."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from standardwebhooks import Webhook


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any  # parsed by Webhook.verify; None when it did not verify
    verified: bool
    status: int | None = None  # what the receiver answered (None: it never answered)

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def event(self) -> str:
        return self.payload["type"] if self.payload else ""

    @property
    def task_id(self) -> str:
        return self.payload["data"]["task_id"] if self.payload else ""


class Receiver:
    """`Receiver()`; `url(path, secret)` is an endpoint whose deliveries are verified with
    `secret`; `answer(path, fn)` sets how a path answers (fn(received) -> status; it may block)."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.answers: dict[str, Callable[[Received], int]] = {}
        self.received: list[Received] = []
        self.changed = threading.Condition()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def url(self, path: str, secret: str | None = None, host: str = "127.0.0.1") -> str:
        if secret is not None:
            self.secrets[path] = secret
        return f"http://{host}:{self.port}{path}"

    def answer(self, path: str, fn: Callable[[Received], int]) -> None:
        self.answers[path] = fn

    def at(self, path: str) -> list[Received]:
        with self.changed:
            return [r for r in self.received if r.path == path]

    def answered_ok(self, path: str) -> list[Received]:
        return [r for r in self.at(path) if r.status is not None and 200 <= r.status < 300]

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Wait until `condition()` holds (checked at every delivery); the timeout only keeps a
        broken test from hanging."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition():
                left = deadline - time.monotonic()
                assert left > 0, f"gave up waiting for {what}; received {self.summary()}"
                self.changed.wait(min(left, 0.5))

    def summary(self) -> list[tuple[str, str, str, int | None]]:
        return [(r.path, r.event, r.id, r.status) for r in self.received]

    def assert_all_verified(self) -> None:
        bad = [r for r in self.received if not r.verified]
        assert not bad, [(r.path, r.headers, r.body[:200]) for r in bad]

    def assert_one_delivery_per_id(self, path: str) -> None:
        """No id was answered 2xx twice: a receiver needs no dedupe by webhook-id."""
        counts = Counter(r.id for r in self.answered_ok(path))
        assert all(n == 1 for n in counts.values()), counts

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path
            secret = receiver.secrets.get(path)
            payload, verified = None, False
            if secret is not None:
                try:
                    payload = Webhook(secret).verify(body, headers)
                    verified = True
                except Exception:
                    payload = None
            else:
                payload = json.loads(body)
            got = Received(path, headers, body, payload, verified or secret is None)
            with receiver.changed:
                receiver.received.append(got)
                receiver.changed.notify_all()
            status = receiver.answers.get(path, lambda _: 200)(got)
            # Recorded before the answer leaves: the sender may mark the message delivered, and a
            # test waiting on that look here, the moment it has read the answer.
            with receiver.changed:
                got.status = status
                receiver.changed.notify_all()
            try:
                reply = b"{}" if status < 300 else b"nope"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url("/redirected"))
                self.send_header("Content-Length", str(len(reply)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply)
                self.wfile.flush()
            except OSError:  # the sender gave up on us: it never had the answer
                with receiver.changed:
                    got.status = None
                    receiver.changed.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
