"""media/netguard.py: which addresses may be fetched from."""

from __future__ import annotations

import asyncio
import ipaddress
import threading

import pytest

from ref2video.errors import MediaError
from ref2video.media.netguard import check_address, forbidden_reason, parse_allow_list, resolve, resolve_allowed

from .conftest import FakeDNS

FORBIDDEN = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "private",
    "100.64.0.1": "shared",
    "100.127.255.254": "shared",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.2.1": "documentation",
    "198.18.0.1": "benchmarking",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "documentation",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:10.0.0.1": "IPv4-mapped private",
    "::ffff:169.254.169.254": "IPv4-mapped link-local",
    "::127.0.0.1": "IPv4-compatible loopback",
    "64:ff9b::7f00:1": "NAT64 loopback",
    "64:ff9b::a9fe:a9fe": "NAT64 link-local",
    "64:ff9b:1::1": "NAT64",
    "2002:7f00:1::1": "6to4 loopback",
    "2002:a00:1::1": "6to4 private",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "Teredo",  # client 127.0.0.1 (obfuscated)
}
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("address", sorted(FORBIDDEN))
def test_forbidden_addresses_are_refused_with_their_reason(address: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None
    # Versions of `ipaddress` name some special ranges only "private" or "reserved"; the
    # embedded-IPv4 and named ranges must say exactly what they are.
    expected = FORBIDDEN[address]
    if expected in ("reserved", "broadcast", "documentation", "benchmarking"):
        assert reason in ("private", "reserved", "not a global address")
    else:
        assert expected in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None
    check_address(ipaddress.ip_address(address))


def test_allow_list_opens_only_its_ranges() -> None:
    allow = parse_allow_list(["127.0.0.0/8", " 10.9.0.0/16 "])
    check_address(ipaddress.ip_address("127.0.0.1"), allow)
    check_address(ipaddress.ip_address("::ffff:127.0.0.1"), allow)  # the same address, v6-mapped
    check_address(ipaddress.ip_address("10.9.1.1"), allow)
    with pytest.raises(MediaError) as info:
        check_address(ipaddress.ip_address("10.8.1.1"), allow)
    assert info.value.code == "InvalidURL"
    assert "10.8.1.1 is private" in info.value.message
    with pytest.raises(MediaError):
        check_address(ipaddress.ip_address("::1"), allow)  # v6 loopback is not in a v4 range


def test_a_bad_allow_list_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        parse_allow_list(["not-a-cidr"])


@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "localhost", "017700000001"]
)
def test_odd_spellings_of_loopback_are_resolved_then_refused(host: str) -> None:
    # The system resolver turns every spelling into 127.0.0.1; nothing leaves the machine.
    with pytest.raises(MediaError) as info:
        asyncio.run(resolve_allowed(host, 80))
    assert info.value.code == "InvalidURL"
    assert f"host {host!r} resolves to 127.0.0.1, which is loopback" in info.value.message


def test_literal_addresses_are_named_as_addresses() -> None:
    with pytest.raises(MediaError, match=r"^address 10\.0\.0\.1 is private"):
        asyncio.run(resolve_allowed("10.0.0.1", 80))


def test_a_name_is_refused_if_any_of_its_addresses_is_forbidden(fake_dns: FakeDNS) -> None:
    fake_dns.names["mixed.test"] = ["8.8.8.8", "10.0.0.1"]
    with pytest.raises(MediaError, match="resolves to 10.0.0.1, which is private"):
        asyncio.run(resolve_allowed("mixed.test", 443))
    fake_dns.names["public.test"] = ["8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"]
    addresses = asyncio.run(resolve_allowed("public.test", 443))
    assert [str(a) for a in addresses] == ["8.8.8.8", "2606:4700:4700::1111"]  # deduplicated, in order


def test_resolution_failures_are_invalid_url(fake_dns: FakeDNS) -> None:
    fake_dns.names["nx.test"] = []
    with pytest.raises(MediaError) as info:
        asyncio.run(resolve("nx.test", 80, timeout=1))
    assert info.value.code == "InvalidURL"
    assert "could not be resolved" in info.value.message


def test_a_slow_resolver_is_cut_off(fake_dns: FakeDNS) -> None:
    release, answered = threading.Event(), threading.Event()

    def stuck() -> list[str]:  # answers only once the test lets it (or after 30 s)
        release.wait(30)
        answered.set()
        return ["8.8.8.8"]

    fake_dns.names["slow.test"] = stuck
    try:
        with pytest.raises(MediaError, match="took longer than 0.1 s") as info:
            asyncio.run(resolve("slow.test", 80, timeout=0.1))
        assert info.value.code == "InvalidURL"
        # The timeout ended the call, and asyncio.run() did not wait for the resolver thread.
        assert not answered.is_set()
    finally:
        release.set()
