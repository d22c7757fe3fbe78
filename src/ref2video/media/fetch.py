"""Download one reference URL, safely: checked addresses, bounded time and bytes.

A reference URL is a stranger's input, so every hop of a download is checked by
`netguard` and then pinned: the request goes to the address that was checked (the URL's host
is replaced by the IP; `Host` and, for https, the TLS server name keep the real name, so the
certificate is still verified against it). A DNS answer that changes between the check and
the connection (DNS rebinding) therefore cannot send us elsewhere. Redirects are followed by
hand so that each one is checked the same way.

Everything is bounded: connect and read timeouts, one deadline for the whole download (a
sender that drips one byte a second is cut off by it), and a byte cap that depends on the kind
of file, known from its first bytes (`sniff`). Until then the larger cap applies, and a
Content-Length over the cap fails before any body is read.

    fetched = await fetch("https://example.com/cat.png", Path("work"), policy=FetchPolicy())
    fetched.path, fetched.format.name, fetched.sha256
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from .. import metrics
from ..errors import MediaError
from .netguard import IPAddress, IPNetwork, parse_allow_list, resolve_allowed
from .sniff import SNIFF_BYTES, Format, Kind, refusal, sniff

__all__ = ["FetchPolicy", "Fetched", "NotModified", "Validators", "fetch", "fetch_if_modified"]

MB = 1024 * 1024
# Response headers kept for callers: content type, validators and freshness (for the cache).
_KEPT_HEADERS = ("content-type", "etag", "last-modified", "cache-control", "expires", "date", "age")


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """Limits of one download, and the address ranges an operator opened on purpose.

    policy = FetchPolicy(allow=("127.0.0.0/8",), total_timeout=30)
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest wait for the next bytes
    total_timeout: float = 120.0  # the whole download, redirects included
    dns_timeout: float = 5.0
    max_redirects: int = 5
    max_image_bytes: int = 20 * MB
    max_video_bytes: int = 100 * MB
    max_audio_bytes: int = 15 * MB
    allow: tuple[str, ...] = ()  # CIDR strings exempt from the address policy
    verify: ssl.SSLContext | bool = True
    user_agent: str = "ref2video-fetch/0.1"
    networks: tuple[IPNetwork, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parse once, here, so a bad CIDR is a configuration error and not a task failure.
        object.__setattr__(self, "networks", parse_allow_list(self.allow))

    def cap(self, kind: Kind | None) -> int:
        """The byte cap for a file of `kind`; the larger one while the kind is unknown."""
        caps = {"image": self.max_image_bytes, "video": self.max_video_bytes, "audio": self.max_audio_bytes}
        return caps[kind] if kind else max(caps.values())


@dataclasses.dataclass(frozen=True)
class Validators:
    """What a cached copy sends to ask "has this changed?" (If-None-Match / If-Modified-Since)."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        conditional = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {name: value for name, value in conditional.items() if value}


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A downloaded file, identified by its content, with the response facts that matter."""

    path: Path
    size: int
    url: str  # after redirects
    sha256: str
    format: Format
    headers: Mapping[str, str]  # only _KEPT_HEADERS, lower-case names

    @property
    def content_type(self) -> str | None:
        """What the server claimed; informative only, the format comes from the bytes."""
        return self.headers.get("content-type")

    @property
    def validators(self) -> Validators:
        return Validators(self.headers.get("etag"), self.headers.get("last-modified"))


@dataclasses.dataclass(frozen=True)
class NotModified:
    """The server answered 304: the caller's copy is still good."""

    url: str
    headers: Mapping[str, str]


async def fetch(
    url: str,
    dest: Path,
    *,
    kind_hint: Kind | None = None,
    policy: FetchPolicy = FetchPolicy(),
    name: str | None = None,
) -> Fetched:
    """Download `url` into the directory `dest`, as `<name or sha256>.<extension>`.

    `kind_hint`, when given, is the kind the caller requires (e.g. the deprecated
    `reference_video_urls` hold videos only): its cap applies from the first byte, and a
    file of the other kind is refused. Raises MediaError (`InvalidURL` for the address,
    redirects and HTTP status; `InvalidParameter` for the content).
    """
    result = await _fetch(url, dest, kind_hint=kind_hint, policy=policy, name=name, validators=None)
    assert isinstance(result, Fetched)  # no validators were sent, so no 304 is honoured
    return result


async def fetch_if_modified(
    url: str,
    dest: Path,
    validators: Validators,
    *,
    kind_hint: Kind | None = None,
    policy: FetchPolicy = FetchPolicy(),
    name: str | None = None,
) -> Fetched | NotModified:
    """Like `fetch`, but sends `validators`; a 304 answer returns NotModified and no file."""
    return await _fetch(url, dest, kind_hint=kind_hint, policy=policy, name=name, validators=validators)


async def _fetch(
    url: str,
    dest: Path,
    *,
    kind_hint: Kind | None,
    policy: FetchPolicy,
    name: str | None,
    validators: Validators | None,
) -> Fetched | NotModified:
    try:
        return await _fetch_once(url, dest, kind_hint=kind_hint, policy=policy, name=name, validators=validators)
    except MediaError as exc:
        metrics.REFERENCE_FAILURES.labels(reason=failure_reason(exc)).inc()
        raise


# The reasons of `ref2video_reference_fetch_failures_total`, by the start of MediaError's
# message (a bounded set of labels); what the content breaks is "content".
_REASONS = (
    ("the server answered HTTP", "http_status"), ("the download did not finish", "timeout"),
    ("the server did not answer in time", "timeout"), ("resolving", "dns"), ("host ", "dns"),
    ("more than", "redirects"), ("could not connect", "connect"), ("the download failed", "transport"),
    ("address ", "blocked"), ("malformed URL", "bad_url"), ("scheme ", "bad_url"), ("URLs with", "bad_url"),
    ("the URL has no host", "bad_url"),
)


def failure_reason(exc: MediaError) -> str:
    """A short, bounded name for why a download failed."""
    if exc.code != "InvalidURL":
        return "too_large" if exc.message.startswith("the file is larger than") else "content"
    for prefix, reason in _REASONS:
        if exc.message.startswith(prefix):
            return reason
    return "blocked" if "fetch_allow" in exc.message else "other"


async def _fetch_once(
    url: str,
    dest: Path,
    *,
    kind_hint: Kind | None,
    policy: FetchPolicy,
    name: str | None,
    validators: Validators | None,
) -> Fetched | NotModified:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        async with asyncio.timeout(policy.total_timeout), _client(policy) as client:
            for _ in range(policy.max_redirects + 1):
                target = _Target.parse(url)
                addresses = await resolve_allowed(
                    target.host, target.port, allow=policy.networks, timeout=policy.dns_timeout
                )
                response = await _send(client, target, addresses, validators)
                try:
                    if response.has_redirect_location:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code == 304 and validators:
                        return NotModified(url, _kept_headers(response))
                    if not response.is_success:
                        raise MediaError(f"the server answered HTTP {response.status_code}", code="InvalidURL")
                    download = _Download(dest, name, kind_hint, policy)
                    return await download.run(response, url)
                finally:
                    await response.aclose()
    except TimeoutError:
        raise MediaError(f"the download did not finish within {policy.total_timeout:g} s", code="InvalidURL") from None
    raise MediaError(f"more than {policy.max_redirects} redirects", code="InvalidURL")


@contextlib.asynccontextmanager
async def _client(policy: FetchPolicy) -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    # trust_env=False: a proxy from the environment would connect to the name, not the pinned IP.
    async with httpx.AsyncClient(
        timeout=timeout,
        verify=policy.verify,
        trust_env=False,
        follow_redirects=False,
        headers={"User-Agent": policy.user_agent},
    ) as client:
        yield client


@dataclasses.dataclass(frozen=True)
class _Target:
    """One hop's URL, split into what is checked (host, port) and what is sent."""

    scheme: str
    host: str  # ASCII, without brackets
    port: int
    path: str  # path and query, as given

    @classmethod
    def parse(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise MediaError(f"malformed URL: {exc}", code="InvalidURL") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaError(f"scheme {scheme or '(none)'!r} is not allowed; use http or https", code="InvalidURL")
        if parts.username is not None or parts.password is not None:
            raise MediaError("URLs with credentials are not accepted", code="InvalidURL")
        host = _ascii_host(parts)
        default_port = 443 if scheme == "https" else 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(scheme, host, port or default_port, path)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == (443 if self.scheme == "https" else 80)
        return host if default else f"{host}:{self.port}"

    def pinned_url(self, address: IPAddress) -> httpx.URL:
        host = f"[{address}]" if address.version == 6 else str(address)
        return httpx.URL(f"{self.scheme}://{host}:{self.port}{self.path}")


def _ascii_host(parts: SplitResult) -> str:
    host = parts.hostname
    if not host:
        raise MediaError("the URL has no host", code="InvalidURL")
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise MediaError(f"host {host!r} is not a valid name", code="InvalidURL") from None


async def _send(
    client: httpx.AsyncClient, target: _Target, addresses: list[IPAddress], validators: Validators | None
) -> httpx.Response:
    """Send the GET to the first checked address that accepts a connection."""
    headers = {
        "Host": target.host_header,
        "Accept-Encoding": "identity",  # the cap then counts the bytes that cross the wire
        **(validators.headers() if validators else {}),
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    failure: BaseException | None = None
    for address in addresses:
        request = client.build_request("GET", target.pinned_url(address), headers=headers, extensions=extensions)
        try:
            with _http_errors():
                return await client.send(request, stream=True)
        except _ConnectFailed as exc:
            failure = exc.__cause__ or exc
    raise MediaError(f"could not connect to {target.host}: {failure}", code="InvalidURL")


class _ConnectFailed(Exception):
    """A connection to one address failed; the next address may be tried."""


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """Translate httpx failures into MediaError, at this edge only."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise _ConnectFailed() from exc
    except httpx.TimeoutException as exc:
        raise MediaError(f"the server did not answer in time ({type(exc).__name__})", code="InvalidURL") from exc
    except httpx.HTTPError as exc:
        raise MediaError(f"the download failed: {type(exc).__name__}: {exc}", code="InvalidURL") from exc


def _kept_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}


class _Download:
    """Streams one response body to a file, sniffing its start and enforcing the caps."""

    def __init__(self, dest: Path, name: str | None, kind_hint: Kind | None, policy: FetchPolicy) -> None:
        self.dest, self.name, self.kind_hint, self.policy = dest, name, kind_hint, policy
        self.cap = policy.cap(kind_hint)
        self.format: Format | None = None
        self.head = b""
        self.size = 0
        self.hasher = hashlib.sha256()
        self.declared: int | None = None

    async def run(self, response: httpx.Response, url: str) -> Fetched:
        self.declared = _content_length(response)
        self._check_declared()
        part = self.dest / f".{uuid.uuid4().hex}.part"
        try:
            with part.open("wb") as out:
                await self._stream(response, out)
            if self.format is None:  # the whole file was shorter than SNIFF_BYTES
                self._decide_format()
            assert self.format is not None
            sha256 = self.hasher.hexdigest()
            path = self.dest / f"{self.name or sha256}.{self.format.extension}"
            part.replace(path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return Fetched(path, self.size, url, sha256, self.format, _kept_headers(response))

    async def _stream(self, response: httpx.Response, out: IO[bytes]) -> None:
        with _http_errors():
            async for chunk in response.aiter_bytes():
                if self.format is None:
                    self.head += chunk[: SNIFF_BYTES - len(self.head)]
                    if len(self.head) >= SNIFF_BYTES:
                        self._decide_format()
                self.size += len(chunk)
                if self.size > self.cap:
                    raise MediaError(self._too_big())
                self.hasher.update(chunk)
                out.write(chunk)

    def _decide_format(self) -> None:
        if not self.head:
            raise MediaError("the file is empty")
        fmt = sniff(self.head)
        if (why := refusal(fmt, self.kind_hint)) is not None:
            raise MediaError(why)
        assert fmt is not None
        self.format = fmt
        self.cap = self.policy.cap(fmt.kind)
        self._check_declared()

    def _check_declared(self) -> None:
        if self.declared is not None and self.declared > self.cap:
            raise MediaError(self._too_big())

    def _too_big(self) -> str:
        kind = self.format.kind if self.format else self.kind_hint
        what = f"the limit for {kind}s" if kind else "the limit before the format is known"
        return f"the file is larger than {self.cap / MB:g} MB ({what})"


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
