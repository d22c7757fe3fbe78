"""A loopback HTTP/1.1 proxy between the relay and a provider that works (in the tests, a second
ref2video server): it forwards every request and, by rule, breaks some of them on the way, before
the provider acts (`drop`, `status`) or after it acted and only its answer is lost or spoiled
(`drop_after`, `status_after`, `broken_json`, `cut`), which is the case a relay must not turn
into a second task. `FaultServer` (faults.py) plays a provider that is broken; this plays the
network and gateway in front of one that is not.

With `rewrite_urls`, the provider's own address in answer bodies and `Location` is replaced by
the proxy's, so the `upload_host` of a getPolicy answer and a task's `video_url` lead back
through the proxy and uploads and downloads can be broken too."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied", 404: "NotFound",
          429: "Throttling.RateQuota", 500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
          504: "GatewayTimeout"}
# Actions that send the request on to the upstream; `pass` is what a request no rule takes gets.
_FORWARDING = {"pass", "drop_after", "status_after", "hold", "broken_json", "cut"}
ACTIONS = frozenset(_FORWARDING | {"drop", "status"})
# Meaningful for one connection only (RFC 9110 section 7.6.1), or recomputed here.
_HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
               "upgrade", "content-encoding", "expect"}

_NO_BODY = {204, 304}


@dataclass
class Rule:
    """Which requests to break, and how. See the module docstring for what each action means;
    `used` counts the requests it was applied to."""

    action: str
    method: str | None = None  # None: any
    path: str = ""  # regex, searched in the path with its query string
    times: int = 1  # -1: forever
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)  # added to the answer, e.g. Retry-After
    hold: float = 0.0
    probability: float = 1.0  # a request it is not applied to goes on to later rules; `times` is spared
    # Called once the upstream answered, before the client is (e.g. to SIGKILL the relay).
    after_forward: Callable[[], None] | None = None
    used: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {sorted(ACTIONS)}")
        if self.after_forward is not None and self.action not in _FORWARDING:
            raise ValueError(f"after_forward needs a forwarding action, not {self.action!r}")
        if self.times == 0 or self.times < -1:
            raise ValueError("times is a positive count, or -1 for forever")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability is between 0 and 1")
        re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        if self.times != -1 and self.used >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return re.search(self.path, path) is not None


@dataclass
class ProxyHit:
    """One request as the proxy saw it. `forwarded`: it was sent to the upstream, which may have
    acted on it even when `upstream_status` is None (no answer came back)."""

    method: str
    path: str
    action: str = "pass"
    upstream_status: int | None = None
    forwarded: bool = False
    at: float = 0.0
    error: str | None = None  # why the upstream gave no answer
    body: bytes = b""  # the request's body, as the client sent it


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class FaultProxy:
    """Forwards to `upstream` (scheme://host:port; the path is the client's), breaking the
    requests that the rules added pick; records every request in `hits`."""

    def __init__(self, upstream: str, *, seed: int = 0, rewrite_urls: bool = True) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"upstream is scheme://host:port without a path, not {upstream!r}")
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.rewrite_urls = rewrite_urls
        self.rules: list[Rule] = []
        self.hits: list[ProxyHit] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # No pooled connections: a test may stop and restart the upstream on the same port, and a
        # stale kept-alive connection would fail one request for a reason no rule chose.
        self._client = httpx.Client(timeout=30.0, follow_redirects=False, trust_env=False,
                                    limits=httpx.Limits(max_keepalive_connections=0))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def add(self, rule: Rule) -> Rule:
        """Rules are tried in the order added; the first that matches and has uses left applies."""
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def forwarded(self, method: str, path_regex: str, ok_only: bool = True) -> int:
        """How many `method` requests whose path matches reached the upstream (with `ok_only`,
        and were answered 2xx by it, whatever the client was then told)."""
        with self._lock:
            hits = list(self.hits)
        return sum(1 for hit in hits
                   if hit.forwarded and hit.method == method.upper() and re.search(path_regex, hit.path)
                   and (not ok_only or (hit.upstream_status is not None and 200 <= hit.upstream_status < 300)))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._client.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _arrive(self, method: str, path: str) -> tuple[ProxyHit, Rule | None]:
        """Records the request and picks (and uses up) the rule for it, under one lock so that
        concurrent requests count `times` exactly."""
        with self._lock:
            hit = ProxyHit(method, path, at=time.monotonic())
            self.hits.append(hit)
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue  # not this time: a later rule may still apply
                rule.used += 1
                hit.action = rule.action
                return hit, rule
            return hit, None

    def _forward(self, hit: ProxyHit, method: str, path: str, headers: list[tuple[str, str]],
                 body: bytes) -> _Answer | None:
        """The upstream's answer, or None when it could not be had (the hit says whether the
        request went out)."""
        kept = [(name, value) for name, value in headers if not _hop_by_hop(name)]
        # httpx.Request, not client.build_request: the upstream sees the client's headers only.
        request = httpx.Request(method, self.upstream + path, headers=kept, content=body)
        try:
            response = self._client.send(request)
        except httpx.HTTPError as error:
            with self._lock:
                hit.error = f"{type(error).__name__}: {error}"
                # Unless it never connected, it went out: whether the upstream acted is unknown.
                hit.forwarded = not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
            return None
        except RuntimeError:  # closed while this request was held: the test is over
            hit.error = "the proxy was closed"
            return None
        with self._lock:
            hit.forwarded, hit.upstream_status = True, response.status_code
        # httpx decoded any Content-Encoding, so the body goes on as identity.
        answer_headers = [(name, value) for name, value in response.headers.multi_items()
                          if not _hop_by_hop(name) or (method == "HEAD" and name.lower() == "content-length")]
        answer = _Answer(response.status_code, answer_headers, response.content)
        if self.rewrite_urls:
            answer = self._rewritten(answer)
        return answer

    def _rewritten(self, answer: _Answer) -> _Answer:
        headers = [(name, value.replace(self.upstream, self.url, 1) if name.lower() == "location" else value)
                   for name, value in answer.headers]
        content_type = next((value for name, value in headers if name.lower() == "content-type"), "").lower()
        body = answer.body
        if content_type.startswith("text/") or "json" in content_type:
            body = body.replace(self.upstream.encode(), self.url.encode())
        return _Answer(answer.status, headers, body)


def _envelope(status: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    """The provider's flat error answer for `status`."""
    body = json.dumps({"request_id": str(uuid.uuid4()), "code": _CODES.get(status, "Error"),
                       "message": message}).encode()
    return _Answer(status, [*(headers or {}).items(), ("Content-Type", "application/json")], body)


def _broken_json(body: bytes) -> bytes:
    """The first half of `body`, at a UTF-8 boundary, made sure not to parse as JSON."""
    half = body[: len(body) // 2].decode("utf-8", "ignore").encode()
    with contextlib.suppress(ValueError):
        json.loads(half)
        half += b"}"  # it parsed (e.g. "12" out of "1234"): trailing data breaks it
    return half


def _hop_by_hop(name: str) -> bool:
    name = name.lower()
    return name in _HOP_BY_HOP or name.startswith("proxy-")


def _handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._handle()

        do_POST = do_HEAD = do_DELETE = do_PUT = do_GET

        def _handle(self) -> None:
            self.close_connection = True
            body = self._body()
            hit, rule = proxy._arrive(self.command, self.path)
            hit.body = body
            action = rule.action if rule else "pass"
            if action == "drop":
                return
            if action == "status":
                assert rule is not None
                self._send(_envelope(rule.status, f"injected {rule.status}", rule.headers))
                return
            if action == "hold":
                assert rule is not None
                time.sleep(rule.hold)
            answer = proxy._forward(hit, self.command, self.path, list(self.headers.items()), body)
            if answer is None:
                self._send(_envelope(502, f"upstream {proxy.upstream}: {hit.error}"))
                return
            if rule is not None and rule.after_forward is not None:
                rule.after_forward()
            extra = list(rule.headers.items()) if rule else []
            if action == "drop_after":
                return
            if action == "status_after":
                assert rule is not None
                self._send(_envelope(rule.status, f"injected {rule.status} after the upstream answered",
                                    rule.headers))
            elif action == "broken_json":
                headers = [(n, v) for n, v in answer.headers if n.lower() != "content-type"]
                self._send(_Answer(200, [*headers, *extra, ("Content-Type", "application/json")],
                                   _broken_json(answer.body)))
            elif action == "cut":
                self._send(_Answer(answer.status, [*answer.headers, *extra], answer.body), cut=True)
            else:
                self._send(_Answer(answer.status, [*answer.headers, *extra], answer.body))

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, answer: _Answer, cut: bool = False) -> None:
            """Answers (or, with `cut`, declares the whole body, sends half and closes); a client
            that is gone already, as some tests intend, is no error."""
            with contextlib.suppress(OSError):
                self.send_response_only(answer.status)  # no Server and Date of its own: the upstream's go on
                for name, value in answer.headers:
                    self.send_header(name, value)
                if self.command != "HEAD" and answer.status not in _NO_BODY:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD" and answer.status not in _NO_BODY:
                    self.wfile.write(answer.body[: len(answer.body) // 2] if cut else answer.body)
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
