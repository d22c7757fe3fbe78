"""One webhook POST: signed (Standard Webhooks), to a checked and pinned address, bounded.

The URL's host is resolved and every address it resolves to must pass the same address policy
as reference fetching (`media/netguard.py`, opened by the `fetch_allow` setting): no loopback,
private, link-local or otherwise non-public address unless the operator allowed its range. The
request then goes to the address that was checked (the URL's host replaced by it; `Host` and,
for https, the TLS server name keep the real name, so the certificate is verified against it),
so a DNS answer that changes in between cannot send it elsewhere.

Redirects are never followed: a 3xx is a failed attempt like any other non-2xx answer, so a
receiver cannot bounce a delivery to an address that was not checked. One deadline bounds the
whole attempt (DNS, connect, sending, the answer's headers), and at most `_READ_BYTES` of the
answer are read, for the log. Each attempt has its own connection (none is kept alive): a
connection is pinned to one checked address and one server name.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, UTC
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from ..errors import MediaError
from ..media.netguard import IPAddress, IPNetwork, resolve_allowed

__all__ = ["Attempt", "signed_headers", "post"]

_READ_BYTES = 512  # of an answer's body, kept in last_error when it is not a 2xx
USER_AGENT = "ref2video-webhooks/0.1"


@dataclasses.dataclass(frozen=True)
class Attempt:
    """How one POST went: `error` is None for a 2xx answer, else what went wrong."""

    status: int | None
    error: str | None


def signed_headers(secret: str, message_id: str, body: str, when: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of `body` (webhook-id, webhook-timestamp, webhook-signature)."""
    when = when or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, when, body),
    }


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], *,
               allow: tuple[IPNetwork, ...], timeout: float) -> Attempt:
    """POST `body` to `url` through `client` (which must not follow redirects)."""
    try:
        async with asyncio.timeout(timeout):
            return await _post(client, url, body, headers, allow, min(timeout, 5.0))
    except TimeoutError:
        return Attempt(None, f"no answer within {timeout:g} s")
    except MediaError as exc:  # the address policy, or a name that does not resolve
        return Attempt(None, f"refused: {exc}")
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                allow: tuple[IPNetwork, ...], dns_timeout: float) -> Attempt:
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    port = parts.port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    addresses = await resolve_allowed(host, port, allow=allow, timeout=dns_timeout)
    shown = f"[{host}]" if ":" in host else host
    sent_headers = {
        **headers, "Host": shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}",
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Connection": "close",
    }
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    failure: BaseException | None = None
    for address in addresses:
        request = client.build_request("POST", _pinned(scheme, address, port, path), content=body,
                                       headers=sent_headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:  # nothing was sent: the next address may be tried
            failure = exc
            continue
        try:
            if response.is_success:
                return Attempt(response.status_code, None)
            head = await _read_some(response)
            return Attempt(response.status_code, f"HTTP {response.status_code}" + (f": {head}" if head else ""))
        finally:
            await response.aclose()
    return Attempt(None, f"could not connect to {host}: {failure}")


def _pinned(scheme: str, address: IPAddress, port: int, path: str) -> httpx.URL:
    host = f"[{address}]" if address.version == 6 else str(address)
    return httpx.URL(f"{scheme}://{host}:{port}{path}")


async def _read_some(response: httpx.Response) -> str:
    """The start of an answer's body, at most `_READ_BYTES`, on one line."""
    got = b""
    async for chunk in response.aiter_raw():
        got += chunk
        if len(got) >= _READ_BYTES:
            break
    return " ".join(got[:_READ_BYTES].decode("utf-8", "replace").split())
