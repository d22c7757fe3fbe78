"""The HTTP server of one process: uvicorn with guards against slow and idle clients.

uvicorn alone has no header-read timeout, and its `limit_concurrency` still accepts (and holds
the file descriptor of) every connection, so a few hundred sockets that send one header line every
few seconds exhaust the process's descriptors: new clients wait forever and the workers fail with
`EMFILE`. `GuardedProtocol` bounds that:

- at most `max_connections` connections are open. A new one past the cap closes the connection
  that has waited longest for a request (reading headers, or idle in keep-alive), so a slow client
  loses its slot and a normal one is served; only when every open connection is busy with a
  request is the new one answered `503 ServiceUnavailable` (`Retry-After: 1`) and closed;
- a request's headers must arrive whole within `header_timeout` seconds of the connection opening
  (or of the first byte of a later keep-alive request), and they may not exceed
  `max_header_bytes`;
- a request body that brings no bytes for `body_timeout` seconds is cut, unless the app is the one
  that is slow (uvicorn's flow control paused reading, or the client waits for `100 Continue`);
- malformed requests are answered in the provider's envelope (`400 InvalidParameter`, JSON).

`server_config(app, settings)` is the uvicorn configuration every server of ours runs with.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import resource
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..config import Settings

__all__ = ["GuardedProtocol", "guarded_protocol", "default_max_connections", "server_config"]

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: worker threads and their reference
# downloads, the database pool, result and scratch files, logs, and the connections asyncio has
# accepted in one turn of the loop before the cap sees them (see ASYNCIO_BACKLOG).
FD_RESERVE = 256
MIN_CONNECTIONS = 32
# When the descriptor limit is unlimited, a cap is still kept: each connection costs memory too.
MAX_DERIVED_CONNECTIONS = 65536
# The listen backlog: the kernel's queue of connections not yet accepted. uvloop (what uvicorn
# runs on where it is installed) accepts one connection per turn of the loop, so the cap sees each
# at once; asyncio's own loop accepts up to `backlog` in one turn before any of them reaches
# `connection_made`, so there one burst must fit in the descriptors kept aside (with uvicorn's
# 2048 it overruns a limit of 1024).
UVLOOP_BACKLOG = 2048
ASYNCIO_BACKLOG = 64
# How often the cap may say that it is cutting or refusing connections; it may do so thousands of
# times a second under attack, and a log that grows as fast is one more way to fall over.
WARN_EVERY_S = 60.0


class _HeadersTooLarge(Exception):
    """Raised from a parser callback: uvicorn catches it as a parser error and answers 400."""


@dataclass(eq=False)
class _Slots:
    """The open connections of one server; `waiting` in the order they began waiting for a request."""

    open: set[GuardedProtocol] = field(default_factory=set)
    waiting: dict[GuardedProtocol, None] = field(default_factory=dict)
    warned_at: float = -math.inf

    def warn(self, now: float, message: str, *args: object) -> None:
        if now - self.warned_at >= WARN_EVERY_S:
            self.warned_at = now
            log.warning(message, *args)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and header and body timeouts.

    Configured by class attributes; `guarded_protocol()` makes a subclass per server, because the
    slots are shared by all the connections of one server.
    """

    max_connections: ClassVar[int | None] = None
    header_timeout: ClassVar[float | None] = None
    body_timeout: ClassVar[float | None] = None
    max_header_bytes: ClassVar[int] = 32 * 1024
    slots: ClassVar[_Slots] = _Slots()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0  # when the body last moved (or the app last held it up)
        self._app_was_waiting = False
        self._in_headers = True  # from the connection's start, and from each message's first byte
        self._header_bytes = 0  # url and header fields parsed so far in this message
        self._unparsed_bytes = 0  # bytes received while the headers are incomplete
        self._bad_request: str | None = None

    # The connection cap

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        slots = self.slots
        if self.max_connections is not None and len(slots.open) >= self.max_connections:
            victim = next((c for c in slots.waiting if not c.transport.get_write_buffer_size()), None)
            if victim is None:
                slots.warn(self.loop.time(), "%d connections open, all busy with requests: answering new ones "
                           "503 until one ends (http_max_connections)", len(slots.open))
                self._refuse()
                return
            slots.warn(self.loop.time(), "%d connections open: closing the one that waited longest for a request "
                       "to admit a new one (http_max_connections)", len(slots.open))
            victim._drop()
        slots.open.add(self)
        self._wait()
        self._header_timer = self._later(self.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._release()  # the connection is the websocket protocol's from now on
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._wait()

    def _wait(self) -> None:
        """Count this connection as waiting for a request: the newest such, the last evicted."""
        if self in self.slots.open:
            self.slots.waiting.pop(self, None)
            self.slots.waiting[self] = None

    def _release(self) -> None:
        self.slots.open.discard(self)
        self.slots.waiting.pop(self, None)
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _drop(self) -> None:
        """Close now: the slot and the descriptor go back at once, whatever was still buffered."""
        self._release()
        self.transport.abort()

    def _refuse(self) -> None:
        self.transport.write(self._envelope(503, "ServiceUnavailable", "the server is at its connection limit; "
                                            "retry shortly", [(b"retry-after", b"1")]))
        self.transport.close()

    # Headers: a deadline, and a size

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            # httptools buffers a header line until it ends, so an endless one is counted here.
            self._unparsed_bytes += len(data)
            if self._unparsed_bytes > self.max_header_bytes:
                self._bad_request = f"the request headers are larger than {self.max_header_bytes} bytes"
                self.send_400_response(self._bad_request)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._header_timer = self._later(self.header_timeout, self._headers_late)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._bad_request = f"the request headers are larger than {self.max_header_bytes} bytes"
            raise _HeadersTooLarge(self._bad_request)

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._in_headers = False
        self._unparsed_bytes = 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a request for the app (not a websocket upgrade)
            self.slots.waiting.pop(self, None)
            self._body_seen = self.loop.time()
            self._app_was_waiting = False
            self._body_timer = self._later(self.body_timeout, self._body_stalled)
            if self.parser.should_upgrade():
                # An upgrade nobody takes: httptools parses nothing more on this connection, so
                # no later request could start (nor its header deadline); close after the answer.
                self.cycle.keep_alive = False

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warns on every such request (and blames a missing websocket library); a client
        # could fill the log with them.
        log.debug("%s: upgrade requested; answered as plain HTTP", self.client)

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("%s: request headers incomplete after %ss; closing", self.client, self.header_timeout)
            self._drop()

    # Bodies: no stall longer than body_timeout

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_seen = self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_stalled(self) -> None:
        self._body_timer = None
        assert self.body_timeout is not None
        if self.transport.is_closing():
            return
        # Waiting on the app, not on the client: reading is paused, or 100 Continue not yet sent.
        # The clock restarts then, and once more after: the app may have only just let go.
        app_waiting = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
        if app_waiting or self._app_was_waiting:
            self._body_seen = self.loop.time()
        self._app_was_waiting = app_waiting
        quiet = self.loop.time() - self._body_seen
        if quiet < self.body_timeout:
            self._body_timer = self._later(self.body_timeout - quiet, self._body_stalled)
            return
        log.debug("%s: no request body bytes for %ss; closing", self.client, self.body_timeout)
        self._drop()

    # Answers written by the server itself, in the provider's envelope

    def send_400_response(self, msg: str) -> None:
        if self.transport.is_closing():
            return
        message = self._bad_request or "the request is not valid HTTP/1.1"
        self.transport.write(self._envelope(400, "InvalidParameter", message))
        self.transport.close()

    def _envelope(self, status: int, code: str, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        body = json.dumps({"request_id": str(uuid.uuid4()), "code": code, "message": message}).encode()
        content = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *(headers or [])]:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        return b"".join(content)

    def _later(self, delay: float | None, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        return None if delay is None else self.loop.call_later(delay, callback)


def guarded_protocol(max_connections: int | None, header_timeout: float | None = 15.0,
                     body_timeout: float | None = 30.0, max_header_bytes: int = 32 * 1024) -> type[GuardedProtocol]:
    """A protocol class for one server (None turns a guard off)."""
    attributes = dict(max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout,
                      max_header_bytes=max_header_bytes, slots=_Slots())
    return type("GuardedProtocol", (GuardedProtocol,), attributes)


def default_max_connections(reserve: int = FD_RESERVE) -> int:
    """Connections that fit under this process's descriptor limit, `reserve` kept for the rest."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DERIVED_CONNECTIONS
    return min(max(soft - reserve, MIN_CONNECTIONS), MAX_DERIVED_CONNECTIONS)


def server_config(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None,
                  log_level: str | None = None) -> uvicorn.Config:
    """The uvicorn configuration of our servers: the guarded protocol, limits from `settings`."""
    max_connections = settings.http_max_connections or default_max_connections()
    protocol = guarded_protocol(max_connections, header_timeout=settings.http_header_timeout,
                                body_timeout=settings.http_body_timeout)
    log.info("HTTP: up to %d connections open at once; headers within %ss; request bodies may pause %ss",
             max_connections, settings.http_header_timeout, settings.http_body_timeout)
    return uvicorn.Config(
        app,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        http=protocol,
        ws="none",  # no websocket routes; an upgrade would leave the guarded protocol
        backlog=UVLOOP_BACKLOG if importlib.util.find_spec("uvloop") else ASYNCIO_BACKLOG,
        timeout_keep_alive=settings.http_keepalive_timeout,  # type: ignore[arg-type]
        log_level=(log_level or settings.log_level).lower(),
        access_log=False,  # api/metrics.py logs one line per request
        lifespan="on",
        # JSON lines come from our root handler (logs.py); uvicorn's own config would write text.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
