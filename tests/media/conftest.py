"""Fixtures for the media tests: sample files, and real HTTP(S) servers on loopback."""

from __future__ import annotations

import dataclasses
import datetime
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ref2video.media.fetch import FetchPolicy

from tests.http_server import Route, Server  # noqa: F401  (Route: for the tests' imports)

from .media_files import make_image, make_video, png_header_only

LOOPBACK = ("127.0.0.0/8",)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample file, by name."""
    root = tmp_path_factory.mktemp("media")
    files = {
        "jpeg": make_image(root / "a.jpg", "JPEG"),
        "png": make_image(root / "a.png", "PNG"),
        "rgba.png": make_image(root / "rgba.png", "PNG", mode="RGBA"),
        "bmp": make_image(root / "a.bmp", "BMP"),
        "webp": make_image(root / "a.webp", "WEBP"),
        "small.png": make_image(root / "small.png", "PNG", size=(120, 90)),
        "mp4": make_video(root / "a.mp4", 2),
        "mp4+aac": make_video(root / "aac.mp4", 2, audio=True),
        "mov": make_video(root / "a.mov", 2, container="mov"),
        "mov+aac": make_video(root / "aac.mov", 2, container="mov", audio=True),
        "long.mp4": make_video(root / "long.mp4", 31, fps=1, size=(64, 48)),
        "short.mp4": make_video(root / "short.mp4", 0.5),
        "faststart.mp4": make_video(root / "faststart.mp4", 2, audio=True, faststart=True),
    }
    whole = files["mp4+aac"].read_bytes()
    files["truncated.mp4"] = root / "truncated.mp4"
    files["truncated.mp4"].write_bytes(whole[: len(whole) * 2 // 3])
    whole = files["faststart.mp4"].read_bytes()
    files["cut.mp4"] = root / "cut.mp4"  # index intact, data cut off
    files["cut.mp4"].write_bytes(whole[: len(whole) - 2000])
    files["bomb.png"] = root / "bomb.png"
    files["bomb.png"].write_bytes(png_header_only(100_000, 100_000))
    files["text"] = root / "a.txt"
    files["text"].write_bytes(b"<html><body>not an image, whatever the header says</body></html>\n" * 4)
    files["empty"] = root / "empty"
    files["empty"].write_bytes(b"")
    return files


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def policy() -> FetchPolicy:
    """Loopback opened on purpose, and short limits so failing tests fail fast."""
    return FetchPolicy(allow=LOOPBACK, connect_timeout=2, read_timeout=2, total_timeout=10, dns_timeout=2)


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything tries to send a request or open a socket; returns the log."""
    attempts: list[str] = []

    async def refuse_request(self: object, request: httpx.Request) -> httpx.Response:
        attempts.append(f"request {request.url}")
        raise AssertionError(f"a request was sent to {request.url}")

    def refuse_connect(self: socket.socket, address: object) -> None:
        attempts.append(f"connect {address}")
        raise AssertionError(f"a connection was opened to {address}")

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse_request)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    return attempts


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Let requests and sockets reach loopback only, so a failing test cannot send traffic
    elsewhere; returns the host:port of every request that reached the transport."""
    sent: list[str] = []
    real_request = httpx.AsyncHTTPTransport.handle_async_request
    real_connect = socket.socket.connect

    async def request(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.url.host}:{request.url.port}")
        assert _is_loopback(request.url.host), f"a request was sent to {request.url}"
        return await real_request(self, request)

    def connect(self: socket.socket, address: Any) -> None:
        assert _is_loopback(address[0]), f"a connection was opened to {address}"
        return real_connect(self, address)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", request)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return sent


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


class FakeDNS:
    """Answers for the names a test sets; every other name goes to the real resolver (which
    the tests only give numbers and `localhost`, so nothing leaves the machine)."""

    def __init__(self) -> None:
        self.names: dict[str, list[str] | Callable[[], list[str]]] = {}
        self.calls: list[str] = []

    def answer(self, host: str, port: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        entry = self.names[host]
        addresses = entry() if callable(entry) else entry
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [_addrinfo(address, port) for address in addresses]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    dns = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host in dns.names:
            return dns.answer(host, port)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


def _addrinfo(address: str, port: Any) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port or 0), 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))


@dataclasses.dataclass
class TLSServer:
    server: Server
    client_context: ssl.SSLContext  # trusts the test certificate only
    server_names: list[str | None]  # the SNI name of each handshake


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """An HTTPS server on loopback whose certificate names only `media.test`."""
    cert, key = _self_signed("media.test", tmp_path_factory.mktemp("tls"))
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment]
    srv = Server(tls=context)
    yield TLSServer(srv, ssl.create_default_context(cafile=str(cert)), names)
    srv.close()


def _self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
