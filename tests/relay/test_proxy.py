"""`FaultProxy` (tests/relay/proxy.py) against a tiny upstream: what it passes through unchanged,
what each action does to the client and to the upstream, how rules are counted."""

from __future__ import annotations

import http.server
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.live import free_port
from tests.relay.proxy import FaultProxy, Rule

TASK = "/api/v1/tasks/t-1"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Answer:
    status: int = 200
    body: bytes | None = None  # None: a JSON echo of the request that names the upstream's own URL
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


class Upstream:
    """Answers `answers[path]` (the path without its query), else a JSON echo; records requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(upstream: Upstream) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            upstream.seen.append(Seen(self.command, self.path, headers, body, time.monotonic()))
            answer = upstream.answers.get(self.path.split("?")[0], Answer())
            content = answer.body if answer.body is not None else json.dumps({
                "method": self.command, "path": self.path, "length": len(body),
                "upload_host": f"{upstream.url}/api/v1/uploads/oss"}).encode()
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_POST = do_HEAD = do_DELETE = do_PUT = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url) as proxy:
        yield proxy


def test_a_get_passes_through(upstream: Upstream, proxy: FaultProxy) -> None:
    upstream.answers["/gone"] = Answer(404, b'{"code": "NotFound"}',
                                       {"Content-Type": "application/json", "X-Trace": "abc"})
    answer = httpx.get(f"{proxy.url}{TASK}?a=1&b=2", headers={"Authorization": "Bearer sk-1"})
    assert answer.status_code == 200
    assert answer.json()["path"] == f"{TASK}?a=1&b=2"
    (seen,) = upstream.seen
    assert seen.headers["authorization"] == "Bearer sk-1"
    assert seen.headers["host"] == upstream.url.removeprefix("http://")  # the upstream's, not the proxy's

    gone = httpx.get(f"{proxy.url}/gone")
    assert (gone.status_code, gone.content, gone.headers["x-trace"]) == (404, b'{"code": "NotFound"}', "abc")
    assert gone.headers["connection"] == "close"
    assert [(h.method, h.path, h.action, h.upstream_status, h.forwarded) for h in proxy.hits] == [
        ("GET", f"{TASK}?a=1&b=2", "pass", 200, True), ("GET", "/gone", "pass", 404, True)]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_request_body_passes_through(upstream: Upstream, proxy: FaultProxy, method: str) -> None:
    body = os.urandom(3_000_000)
    answer = httpx.request(method, f"{proxy.url}/api/v1/uploads/oss", content=body,
                           headers={"Content-Type": "application/octet-stream"})
    assert answer.json() == {"method": method, "path": "/api/v1/uploads/oss", "length": len(body),
                             "upload_host": f"{proxy.url}/api/v1/uploads/oss"}
    assert upstream.seen[0].body == body
    assert upstream.seen[0].headers["content-type"] == "application/octet-stream"


def test_multipart_chunked_and_head(upstream: Upstream, proxy: FaultProxy) -> None:
    httpx.post(f"{proxy.url}/oss", data={"key": "dir/a.png"}, files={"file": ("a.png", b"\x89PNG" * 1000)})
    assert b'name="key"\r\n\r\ndir/a.png' in upstream.seen[0].body
    assert b"\x89PNG" * 1000 in upstream.seen[0].body

    httpx.post(f"{proxy.url}/chunked", content=iter([b"ab", b"cd" * 5000]))  # no Content-Length
    assert upstream.seen[1].body == b"ab" + b"cd" * 5000

    head = httpx.head(f"{proxy.url}/v.mp4")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0  # the upstream's, for the GET it would have sent


def test_drop_never_reaches_the_upstream(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add(Rule("drop", method="POST"))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{proxy.url}/task/bailian/ref2video", json={})
    assert upstream.seen == []
    assert httpx.post(f"{proxy.url}/task/bailian/ref2video", json={}).status_code == 200  # used up
    assert [(h.action, h.forwarded, h.upstream_status) for h in proxy.hits] == [("drop", False, None),
                                                                                ("pass", True, 200)]


def test_drop_after_loses_the_answer_of_a_request_that_acted(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add(Rule("drop_after", path="video-synthesis$"))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{proxy.url}/api/v1/services/aigc/video-generation/video-synthesis", json={"a": 1})
    assert [seen.body for seen in upstream.seen] == [b'{"a":1}']
    assert proxy.forwarded("POST", "video-synthesis") == 1


@pytest.mark.parametrize("status, code", [(429, "Throttling.RateQuota"), (500, "InternalError"),
                                          (503, "ServiceUnavailable")])
def test_status_answers_the_envelope_without_forwarding(upstream: Upstream, proxy: FaultProxy,
                                                        status: int, code: str) -> None:
    proxy.add(Rule("status", status=status, headers={"Retry-After": "2"}))
    answer = httpx.get(f"{proxy.url}{TASK}")
    assert (answer.status_code, answer.headers["retry-after"]) == (status, "2")
    assert answer.headers["content-type"] == "application/json"
    envelope = answer.json()
    assert envelope["code"] == code and envelope["request_id"] and envelope["message"]
    assert upstream.seen == [] and proxy.forwarded("GET", "") == 0


def test_status_after_replaces_the_upstreams_answer(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add(Rule("status_after", method="post", status=503))
    answer = httpx.post(f"{proxy.url}/x", json={})
    assert (answer.status_code, answer.json()["code"]) == (503, "ServiceUnavailable")
    assert len(upstream.seen) == 1
    assert proxy.hits[0].upstream_status == 200 and proxy.forwarded("POST", "/x") == 1


def test_hold_delays_the_forward(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add(Rule("hold", hold=0.3))
    started = time.monotonic()
    assert httpx.get(f"{proxy.url}{TASK}").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert upstream.seen[0].at - proxy.hits[0].at >= 0.29  # the upstream heard of it only then
    proxy.add(Rule("hold", hold=0.3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{proxy.url}{TASK}", timeout=0.1)
    deadline = time.monotonic() + 5
    while len(upstream.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(upstream.seen) == 2  # a client that gave up first does not stop the forward


def test_broken_json(upstream: Upstream, proxy: FaultProxy) -> None:
    created = b'{"output": {"task_id": "t-1", "task_status": "PENDING"}}'
    upstream.answers["/created"] = Answer(201, created)
    proxy.add(Rule("broken_json", times=-1))
    answer = httpx.post(f"{proxy.url}/created")
    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/json")
    assert answer.content == created[: len(created) // 2]
    with pytest.raises(json.JSONDecodeError):
        answer.json()
    upstream.answers["/number"] = Answer(200, b"1234")  # its first half would parse
    with pytest.raises(json.JSONDecodeError):
        httpx.get(f"{proxy.url}/number").json()
    assert len(upstream.seen) == 2


def test_cut_sends_half_of_the_declared_body(upstream: Upstream, proxy: FaultProxy) -> None:
    upstream.answers["/v.mp4"] = Answer(200, b"v" * 10_000, {"Content-Type": "video/mp4"})
    proxy.add(Rule("cut", path=r"\.mp4"))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy.url}/v.mp4")
    with httpx.stream("GET", f"{proxy.url}/v.mp4") as whole:  # the rule is used up
        assert whole.headers["content-length"] == "10000"
        assert len(whole.read()) == 10_000
    assert len(upstream.seen) == 2


def test_rules_apply_in_order_and_by_method_and_path(upstream: Upstream, proxy: FaultProxy) -> None:
    first = proxy.add(Rule("status", status=429, path=r"action=getPolicy", times=2))
    second = proxy.add(Rule("status", status=503, method="GET", times=-1))
    policy = f"{proxy.url}/api/v1/uploads?action=getPolicy&model=m"
    statuses = [httpx.get(policy).status_code for _ in range(3)] + [httpx.post(f"{proxy.url}/x").status_code]
    assert statuses == [429, 429, 503, 200]
    assert (first.used, second.used) == (2, 1)
    proxy.clear()
    assert httpx.get(policy).status_code == 200


def test_probability_uses_the_seeded_random_and_spares_times(upstream: Upstream) -> None:
    draws = random.Random(7)
    expected = [draws.random() < 0.5 for _ in range(30)]
    # Applied to the first three draws under 0.5 only; a request passed over does not use it up.
    expected_limited = [False] * 30
    for index in [i for i, hit in enumerate(expected) if hit][:3]:
        expected_limited[index] = True
    for times, want in ((-1, expected), (3, expected_limited)):
        with FaultProxy(upstream.url, seed=7) as proxy, httpx.Client() as client:
            rule = proxy.add(Rule("status", status=503, times=times, probability=0.5))
            got = [client.get(f"{proxy.url}/p").status_code == 503 for _ in range(30)]
            assert got == want and rule.used == sum(want)
            assert [hit.action for hit in proxy.hits] == ["status" if hit else "pass" for hit in want]


def test_times_is_exact_under_concurrent_requests(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add(Rule("status", status=429, times=3))
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: httpx.get(f"{proxy.url}/c").status_code, range(10)))
    assert sorted(statuses) == [200] * 7 + [429] * 3
    assert len(upstream.seen) == 7


@pytest.mark.parametrize("action", ["pass", "drop_after", "status_after"])
def test_after_forward_runs_between_the_upstreams_answer_and_the_clients(upstream: Upstream, proxy: FaultProxy,
                                                                          action: str) -> None:
    calls: list[tuple[int, int]] = []
    answered: list[int] = []
    proxy.add(Rule(action, after_forward=lambda: calls.append((len(upstream.seen), len(answered)))))
    try:
        answered.append(httpx.post(f"{proxy.url}/x").status_code)
    except httpx.RemoteProtocolError:
        assert action == "drop_after"
    assert calls == [(1, 0)]


def test_after_forward_needs_a_forwarding_action() -> None:
    with pytest.raises(ValueError, match="after_forward"):
        Rule("drop", after_forward=lambda: None)
    with pytest.raises(ValueError, match="unknown action"):
        Rule("explode")
    with pytest.raises(ValueError, match="times"):
        Rule("drop", times=0)


def test_urls_are_rewritten_to_the_proxy(upstream: Upstream, proxy: FaultProxy) -> None:
    assert httpx.get(f"{proxy.url}/api/v1/uploads?action=getPolicy").json()["upload_host"] == (
        f"{proxy.url}/api/v1/uploads/oss")
    upstream.answers["/moved"] = Answer(302, b"", {"Location": f"{upstream.url}/v1/results/k?sig=s"})
    moved = httpx.get(f"{proxy.url}/moved")
    assert (moved.status_code, moved.headers["location"]) == (302, f"{proxy.url}/v1/results/k?sig=s")
    binary = f"bytes naming {upstream.url}".encode()
    upstream.answers["/v.mp4"] = Answer(200, binary, {"Content-Type": "video/mp4"})
    assert httpx.get(f"{proxy.url}/v.mp4").content == binary  # not a JSON or text answer: untouched


def test_rewrite_urls_off(upstream: Upstream) -> None:
    with FaultProxy(upstream.url, rewrite_urls=False) as proxy:
        assert httpx.get(f"{proxy.url}/x").json()["upload_host"] == f"{upstream.url}/api/v1/uploads/oss"


def test_an_upstream_that_is_down_is_a_502() -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        answer = httpx.post(f"{proxy.url}/api/v1/tasks/t-1/cancel")
        assert (answer.status_code, answer.json()["code"]) == (502, "BadGateway")
        (hit,) = proxy.hits
        assert (hit.forwarded, hit.upstream_status) == (False, None) and "ConnectError" in (hit.error or "")


def test_forwarded_counts(upstream: Upstream, proxy: FaultProxy) -> None:
    upstream.answers["/missing"] = Answer(404, b"{}")
    proxy.add(Rule("drop", path="/dropped"))
    proxy.add(Rule("status_after", path="/spoiled"))
    for path in ("/a", "/a", "/missing", "/spoiled"):
        httpx.get(proxy.url + path)
    httpx.post(proxy.url + "/a")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(proxy.url + "/dropped")
    assert proxy.forwarded("GET", "^/a$") == 2 and proxy.forwarded("get", "^/a$") == 2
    assert proxy.forwarded("POST", "/a") == 1
    assert proxy.forwarded("GET", "/missing") == 0 and proxy.forwarded("GET", "/missing", ok_only=False) == 1
    assert proxy.forwarded("GET", "/spoiled") == 1  # the upstream's 2xx counts, not what the client got
    assert proxy.forwarded("GET", "/dropped", ok_only=False) == 0
    assert len(proxy.hits) == 6
