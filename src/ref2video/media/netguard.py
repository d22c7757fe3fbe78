"""Which network addresses a reference may be fetched from (ARCHITECTURE.md, decision 6).

Reference URLs come from strangers, so a fetch must never reach this host, its network, or a
cloud metadata service. The rule: an address is refused when it is loopback, private,
link-local, multicast, reserved, unspecified, shared (100.64.0.0/10) or otherwise not global,
including IPv6 forms that carry such an IPv4 address inside (IPv4-mapped, IPv4-compatible,
6to4, Teredo, NAT64). Operators may open ranges on purpose with an allow-list of CIDRs.

Host names are resolved once, and every address they resolve to must pass: a name with one
good and one bad address is refused, because the connection could go to either. Resolving
through `getaddrinfo` also normalises odd spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`,
`127.1`) to the address they really mean before it is checked.

    allow = parse_allow_list(["127.0.0.0/8"])
    addresses = await resolve_allowed("example.com", 443, allow=allow, timeout=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..errors import MediaError

__all__ = [
    "IPAddress",
    "IPNetwork",
    "parse_allow_list",
    "forbidden_reason",
    "check_address",
    "resolve",
    "resolve_allowed",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

# Named here because `ipaddress` does not flag them, or flags them differently across versions.
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215)
_COMPAT = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible IPv6


def parse_allow_list(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse operator CIDR strings; a bad entry is a configuration error (ValueError)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why `address` may not be fetched from (e.g. "loopback"), or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        return _ipv6_reason(address)
    return _ipv4_reason(address)


def check_address(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> None:
    """Raise MediaError(InvalidURL) unless `address` is allowed or on the allow-list."""
    reason = _refusal(address, allow)
    if reason:
        raise MediaError(f"address {address} is {reason}; {_how_to_allow(address)}", code="InvalidURL")


async def resolve(host: str, port: int, *, timeout: float) -> list[IPAddress]:
    """All addresses `host` resolves to, in resolver order, without duplicates.

    `getaddrinfo` blocks, so it runs in a thread of its own; the timeout bounds the wait.
    Not the loop's default executor: `asyncio.run()` waits for those threads on exit, so a
    hanging resolver would hold the caller long after the timeout.
    """
    try:
        infos = await asyncio.wait_for(_in_daemon_thread(_getaddrinfo, host, port), timeout)
    except TimeoutError:
        raise MediaError(f"resolving {host!r} took longer than {timeout:g} s", code="InvalidURL") from None
    except (OSError, UnicodeError) as exc:
        raise MediaError(f"host {host!r} could not be resolved", code="InvalidURL") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise MediaError(f"host {host!r} has no address", code="InvalidURL")
    return addresses


async def resolve_allowed(
    host: str, port: int, *, allow: Sequence[IPNetwork] = (), timeout: float = 5.0
) -> list[IPAddress]:
    """Resolve `host` and check every address; refuse the host if any one is forbidden."""
    addresses = await resolve(host, port, timeout=timeout)
    for address in addresses:
        reason = _refusal(address, allow)
        if reason:
            what = f"address {address}" if _is_literal(host, address) else f"host {host!r} resolves to {address}, which"
            raise MediaError(f"{what} is {reason}; {_how_to_allow(address)}", code="InvalidURL")
    return addresses


def _in_daemon_thread(function: Callable[..., T], *args: object) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # it may have been cancelled by the timeout
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, function(*args))
        except BaseException as exc:  # handed to the awaiting task, which decides
            outcome = functools.partial(future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="ref2video-resolve", daemon=True).start()
    return future


def _getaddrinfo(host: str, port: int) -> list[tuple]:  # type: ignore[type-arg]
    # Looked up on the module at call time, so tests can stand in a fake resolver.
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address in _SHARED, "shared (carrier-grade NAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not a global address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _ipv6_reason(address: ipaddress.IPv6Address) -> str | None:
    # Check the IPv4 address a v6 form carries first: `::ffff:127.0.0.1` reaches 127.0.0.1.
    for label, inner in _embedded_ipv4(address):
        reason = _ipv4_reason(inner)
        if reason:
            return f"{label} {reason} ({inner})"
    if address.ipv4_mapped is not None or (address in _COMPAT and int(address) > 1):
        return None  # its IPv4 address passed above
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_site_local, "site-local"),
        (address.is_multicast, "multicast"),
        (address in _NAT64_LOCAL, "local-use NAT64"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not a global address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address stands for, with the name of the form."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    if address in _COMPAT and int(address) > 1:  # `::` and `::1` are v6 addresses of their own
        found.append(("IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    if address in _NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    return found


def _how_to_allow(address: IPAddress) -> str:
    """The second half of a refusal: that it is refused, and the setting that allows it (a
    self-hosting user's first local media server is the common case)."""
    host = f"{address}/{address.max_prefixlen}"
    return (f"fetching from it is forbidden unless the operator allows it with the fetch_allow setting "
            f"(for example REF2VIDEO_FETCH_ALLOW={host})")


def _refusal(address: IPAddress, allow: Sequence[IPNetwork]) -> str | None:
    return None if _allow_listed(address, allow) else forbidden_reason(address)


def _allow_listed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in network for candidate in candidates for network in allow if candidate.version == network.version
    )


def _is_literal(host: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == address
    except ValueError:
        return False
