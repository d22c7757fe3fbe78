"""A threaded HTTP server on loopback whose routes tests set: the stand-in for the strangers'
servers that references come from."""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Route:
    """What the test server answers on one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # One of: None (send `body`), "drip" (`body` one byte every 0.2 s, round and round),
    # "endless" (bytes forever).
    behaviour: str | None = None
    # Called with the request headers; may return a replacement Route (e.g. a 304).
    respond: Callable[[dict[str, str]], Route | None] | None = None


class Server:
    """A threaded HTTP server on 127.0.0.1 whose routes the tests set, and which records hits."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        self.dropped: list[str] = []  # paths whose answer the client hung up on before its end
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        if tls:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def serve(self, path: str, body: bytes = b"", **options: Any) -> str:
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def serve_file(self, path: str, file: Path, content_type: str = "application/octet-stream", **options: Any) -> str:
        headers = {"Content-Type": content_type, **options.pop("headers", {})}
        return self.serve(path, file.read_bytes(), headers=headers, **options)

    def hits_for(self, path: str) -> list[dict[str, str]]:
        return [headers for hit_path, headers in self.hits if hit_path == path]

    def hung_up_on(self, path: str, timeout: float = 20.0) -> bool:
        """Whether the client hangs up on `path`'s answer before its end (seen at the server's
        next write), waiting up to `timeout` s for it."""
        deadline = time.monotonic() + timeout
        while path not in self.dropped:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            server.hits.append((self.path, headers))
            route = server.routes.get(self.path, Route(b"not found", status=404))
            route = (route.respond(headers) if route.respond else None) or route
            try:
                self._answer(route)
            except OSError:  # the client gave up, as the tests intend
                server.dropped.append(self.path)

        def _answer(self, route: Route) -> None:
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.behaviour is None and "Content-Length" not in route.headers:
                self.send_header("Content-Length", str(len(route.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if route.behaviour == "drip":
                drops = route.body or b"\0"
                for n in range(150):  # at most 30 s, far beyond any test's deadline
                    self.wfile.write(bytes([drops[n % len(drops)]]))
                    self.wfile.flush()
                    time.sleep(0.2)
            elif route.behaviour == "endless":
                chunk = route.body or b"\0" * 65536
                for _ in range(100_000):
                    self.wfile.write(chunk)
            else:
                self.wfile.write(route.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
