"""The guarded HTTP server over real loopback sockets: header and body timeouts, the connection
cap (evicting the longest-waiting connection, 503 when every slot is busy), and the 400 envelope."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from ref2video.api.server import GuardedProtocol, default_max_connections, server_config
from ref2video.config import Settings

from tests.live import free_port

# Seconds the app sleeps before reading a body: several body timeouts of the servers below.
LATE_READ_S = 1.0
WAIT_S = 10.0  # a bound for conditions that should hold within milliseconds


class App:
    """A raw ASGI app: `/hold` waits for `gate`; `/late` sleeps before reading; all echo the body size."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.holding = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/hold":
            self.holding += 1
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        if scope["path"] == "/late":
            await asyncio.sleep(LATE_READ_S)
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"bytes": size}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    port: int
    protocol: type[GuardedProtocol]
    app: App
    sockets: list[socket.socket] = field(default_factory=list)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)
        self.sockets.append(sock)
        return sock

    def wait_open(self, count: int) -> None:
        """Until the server counts `count` connections (it sees a new one a moment after connect)."""
        wait_for(lambda: len(self.protocol.slots.open) == count, f"{count} open connections")


@pytest.fixture(params=["auto", "asyncio"], ids=["uvloop", "asyncio"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """Start guarded servers with these settings (small timeouts and caps); stopped at the end.

    On both event loops: their transports differ (uvloop where installed, as uvicorn prefers it).
    """
    running: list[tuple[uvicorn.Server, threading.Thread, Served]] = []

    def start(**settings: Any) -> Served:
        app, port = App(), free_port()
        config = server_config(app, Settings(**settings), host="127.0.0.1", port=port, log_level="warning")
        config.loop = request.param
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started
        served = Served(port, config.http, app)  # type: ignore[arg-type]
        running.append((server, thread, served))
        return served

    yield start
    for server, thread, served in running:
        served.app.gate.set()
        for sock in served.sockets:
            sock.close()
        server.should_exit = True
        thread.join(WAIT_S)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S}s for {what}"
        time.sleep(0.005)


def read_until_closed(sock: socket.socket, keep_sending: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closing).

    With `keep_sending`, that is sent every 0.1 s meanwhile, like a slow client.
    """
    received = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if keep_sending:
                sock.send(keep_sending)
            if select.select([sock], [], [], 0.1)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    return received
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            return received
    raise AssertionError(f"the server did not close the connection in {WAIT_S}s; received {received!r}")


def read_response(sock: socket.socket) -> bytes:
    """One whole response (by its content-length) on a connection that stays open."""
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < int(parse(raw)[1]["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {raw!r}"
        raw += chunk
    return raw


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (it has neither closed it nor answered)."""
    return not select.select([sock], [], [], 0)[0]


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def request(served: Served, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    sock = served.connect()
    sock.sendall(raw)
    return parse(read_until_closed(sock))


GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_the_settings_reach_the_server() -> None:
    config = server_config(App(), Settings(http_max_connections=7, http_header_timeout=2.5, http_body_timeout=4,
                                           http_keepalive_timeout=9))
    protocol: type[GuardedProtocol] = config.http  # type: ignore[assignment]
    assert (protocol.max_connections, protocol.header_timeout, protocol.body_timeout) == (7, 2.5, 4)
    assert config.timeout_keep_alive == 9 and not config.access_log
    # By default the cap leaves descriptors for the rest of the process.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    default = server_config(App(), Settings()).http.max_connections  # type: ignore[union-attr]
    assert default == default_max_connections() and 32 <= default <= max(soft - 256, 32)


def test_headers_that_never_finish_are_cut(serve: Callable[..., Served]) -> None:
    served = serve(http_header_timeout=0.3)
    silent, dripping = served.connect(), served.connect()
    dripping.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert read_until_closed(dripping, keep_sending=b"X-Drip: 1\r\n") == b""
    assert read_until_closed(silent) == b""
    served.wait_open(0)
    assert request(served, GET)[0] == 200  # a prompt client is still served


def test_a_kept_alive_connection_gets_a_new_header_deadline_per_request(serve: Callable[..., Served]) -> None:
    served = serve(http_header_timeout=0.3, http_keepalive_timeout=30)
    sock = served.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse(read_response(sock))[0] == 200
    sock.send(b"GET / HTTP/1.1\r\n")  # the next request starts, and never finishes its headers
    assert read_until_closed(sock, keep_sending=b"X-Drip: 1\r\n") == b""


def test_a_stalled_body_is_cut_and_a_steady_one_is_read(serve: Callable[..., Served]) -> None:
    served = serve(http_body_timeout=0.5)
    stalled = served.connect()
    stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    assert read_until_closed(stalled) == b""

    steady = served.connect()
    steady.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 500\r\n\r\n")
    for _ in range(5):  # gaps shorter than the timeout, a whole body longer than it
        time.sleep(0.1)
        steady.sendall(b"x" * 100)
    status, _, body = parse(read_until_closed(steady))
    assert (status, json.loads(body)) == (200, {"bytes": 500})


def test_a_body_the_app_is_slow_to_read_is_not_cut(serve: Callable[..., Served]) -> None:
    served = serve(http_body_timeout=0.3)
    # Larger than uvicorn's read buffer (64 KiB): reading pauses until the app asks for the body.
    size = 1 << 20
    sock = served.connect()
    head = f"POST /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n".encode()
    sender = threading.Thread(target=sock.sendall, args=(head + b"x" * size,), daemon=True)
    sender.start()
    status, _, body = parse(read_until_closed(sock))
    sender.join(WAIT_S)
    assert (status, json.loads(body)) == (200, {"bytes": size})

    # A client that waits for 100 Continue sends nothing until the app reads: not a stall either.
    sock = served.connect()
    sock.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 5\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
    sock.sendall(b"hello")
    status, _, body = parse(read_until_closed(sock))
    assert (status, json.loads(body)) == (200, {"bytes": 5})


def test_the_cap_closes_the_longest_waiting_connection_for_a_new_one(serve: Callable[..., Served]) -> None:
    served = serve(http_max_connections=3, http_header_timeout=60)
    slow = []
    for n in range(3):
        sock = served.connect()
        sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        served.wait_open(n + 1)  # so that the server saw them in this order
        slow.append(sock)

    status, _, body = request(served, GET)
    assert (status, json.loads(body)) == (200, {"bytes": 0})
    assert read_until_closed(slow[0]) == b""  # the oldest lost its slot
    assert is_open(slow[1]) and is_open(slow[2])

    # A connection idle between requests waits too: after its answer it is the newest in line.
    kept = served.connect()
    served.wait_open(3)
    kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse(read_response(kept))[0] == 200
    assert request(served, GET)[0] == 200
    assert read_until_closed(slow[1]) == b""
    assert is_open(slow[2]) and is_open(kept)


def test_when_every_slot_is_busy_a_new_connection_gets_503(serve: Callable[..., Served]) -> None:
    served = serve(http_max_connections=2)
    held = [served.connect() for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    wait_for(lambda: served.app.holding == 2, "two requests in the app")

    status, headers, body = request(served, GET)
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    envelope = json.loads(body)
    assert envelope["code"] == "ServiceUnavailable" and envelope["message"] and envelope["request_id"]

    served.app.gate.set()
    assert [parse(read_until_closed(sock))[0] for sock in held] == [200, 200]
    served.wait_open(0)
    assert request(served, GET)[0] == 200


def test_an_upgrade_nobody_takes_is_answered_and_closed(serve: Callable[..., Served]) -> None:
    served = serve()
    status, headers, _ = request(served, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"


@pytest.mark.parametrize("raw, says", [
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n", "not valid HTTP"),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "larger than 32768 bytes"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000, "larger than 32768 bytes"),  # never ends
], ids=["garbage", "long-request-line", "endless-header"])
def test_malformed_requests_get_the_400_envelope(serve: Callable[..., Served], raw: bytes, says: str) -> None:
    served = serve()
    sock = served.connect()
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # it may answer before reading all
        sock.sendall(raw)
    status, headers, body = parse(read_until_closed(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    envelope = json.loads(body)
    assert envelope["code"] == "InvalidParameter" and says in envelope["message"] and envelope["request_id"]
