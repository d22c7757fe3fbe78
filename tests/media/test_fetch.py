"""media/fetch.py: one pinned, bounded download, against real servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest

from ref2video.errors import MediaError
from ref2video.media.fetch import Fetched, FetchPolicy, NotModified, Validators, fetch, fetch_if_modified
from ref2video.media.sniff import MP4, PNG

from .conftest import FakeDNS, Route, Server, TLSServer

KB = 1024


def run_fetch(url: str, dest: Path, policy: FetchPolicy, **options: object) -> Fetched:
    return asyncio.run(fetch(url, dest, policy=policy, **options))  # type: ignore[arg-type]


def failure(url: str, dest: Path, policy: FetchPolicy, **options: object) -> MediaError:
    with pytest.raises(MediaError) as info:
        run_fetch(url, dest, policy, **options)
    assert not list(dest.glob("*")), "a failed fetch leaves no file behind"
    return info.value


def test_a_file_is_streamed_to_disk_with_its_facts(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    body = media["png"].read_bytes()
    url = server.serve(
        "/f/a.png",
        body,
        headers={"Content-Type": "image/png", "ETag": '"v1"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )
    fetched = run_fetch(url, tmp_path, policy)
    assert fetched.path == tmp_path / f"{hashlib.sha256(body).hexdigest()}.png"
    assert fetched.path.read_bytes() == body
    assert (fetched.size, fetched.sha256, fetched.format, fetched.url) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
        PNG,
        url,
    )
    assert fetched.content_type == "image/png"
    assert fetched.validators == Validators('"v1"', "Wed, 21 Oct 2015 07:28:00 GMT")
    request = server.hits_for("/f/a.png")[-1]
    assert request["host"] == f"127.0.0.1:{server.port}"
    assert request["accept-encoding"] == "identity"


def test_the_name_can_be_chosen(server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy) -> None:
    url = server.serve_file("/f/named", media["mp4"])
    assert run_fetch(url, tmp_path, policy, name="reference3").path == tmp_path / "reference3.mp4"


def test_the_format_comes_from_the_bytes(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    url = server.serve_file("/f/png-as-mp4.mp4", media["png"], "video/mp4")
    assert run_fetch(url, tmp_path, policy).format == PNG
    url = server.serve_file("/f/mp4-as-png.png", media["mp4"], "image/png")
    assert run_fetch(url, tmp_path / "2", policy).format == MP4
    url = server.serve_file("/f/text-as-png.png", media["text"], "image/png")
    error = failure(url, tmp_path / "3", policy)
    assert error.code == "InvalidParameter"
    assert error.message.startswith("unsupported format")


def test_an_empty_body_is_refused(server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy) -> None:
    error = failure(server.serve_file("/f/empty", media["empty"], "image/png"), tmp_path, policy)
    assert (error.code, error.message) == ("InvalidParameter", "the file is empty")


def test_the_kind_hint_is_a_requirement(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    error = failure(server.serve_file("/f/hint.png", media["png"]), tmp_path, policy, kind_hint="video")
    assert (error.code, error.message) == ("InvalidParameter", "expected a video, got a PNG image")


class TestCaps:
    def test_a_declared_length_over_the_cap_fails_before_reading(
        self, server: Server, tmp_path: Path, policy: FetchPolicy
    ) -> None:
        # The server promises 10 GB and sends a few bytes: only the header can have decided.
        url = server.serve("/cap/declared", b"\x89PNG", headers={"Content-Length": str(10 * 1024**3)})
        error = failure(url, tmp_path, policy)
        assert (error.code, error.message) == (
            "InvalidParameter",
            "the file is larger than 100 MB (the limit before the format is known)",
        )

    def test_an_endless_body_is_cut_at_the_cap(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        small = dataclasses.replace(policy, max_image_bytes=64 * KB, max_video_bytes=256 * KB)
        video_chunk = MP4_HEAD + b"\0" * (16 * KB - len(MP4_HEAD))
        url = server.serve("/cap/endless-video", video_chunk, behaviour="endless")
        error = failure(url, tmp_path, small)
        assert error.message == "the file is larger than 0.25 MB (the limit for videos)"

    def test_the_image_cap_applies_once_the_bytes_say_image(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        small = dataclasses.replace(policy, max_image_bytes=64 * KB, max_video_bytes=1024 * KB)
        png_chunk = media["png"].read_bytes()[:64] + b"\0" * (16 * KB - 64)
        url = server.serve("/cap/endless-png", png_chunk, behaviour="endless")
        assert failure(url, tmp_path, small).message == "the file is larger than 0.0625 MB (the limit for images)"
        # A declared length between the two caps fails as soon as the first bytes are known.
        url = server.serve("/cap/declared-png", png_chunk * 8, headers={"Content-Length": str(128 * KB)})
        assert failure(url, tmp_path, small).message == "the file is larger than 0.0625 MB (the limit for images)"

    def test_a_file_at_the_cap_passes(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        body = media["png"].read_bytes()
        exact = dataclasses.replace(policy, max_image_bytes=len(body))
        assert run_fetch(server.serve("/cap/exact.png", body), tmp_path, exact).size == len(body)
        with pytest.raises(MediaError, match="larger than"):
            run_fetch(server.serve("/cap/over.png", body + b"\0"), tmp_path, exact)


MP4_HEAD = b"\0\0\0\x18ftypisom\0\0\2\0isomiso2"


class TestTime:
    def test_a_slow_drip_is_cut_off_by_the_total_deadline(
        self, server: Server, tmp_path: Path, policy: FetchPolicy
    ) -> None:
        # One byte every 0.2 s never trips the read timeout (2 s); the deadline must.
        # The message names the deadline: neither the read timeout nor the drip's own end (30 s).
        url = server.serve("/time/drip", b"\x89", behaviour="drip")
        error = failure(url, tmp_path, dataclasses.replace(policy, total_timeout=1.0))
        assert (error.code, error.message) == ("InvalidURL", "the download did not finish within 1 s")

    def test_a_silent_server_trips_the_read_timeout(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        def stall(headers: dict[str, str]) -> Route:
            time.sleep(1.0)
            return Route(b"late")

        server.routes["/time/stall"] = Route(respond=stall)
        error = failure(server.url("/time/stall"), tmp_path, dataclasses.replace(policy, read_timeout=0.3))
        assert error.code == "InvalidURL"
        assert error.message.startswith("the server did not answer in time")


class TestRedirects:
    def test_redirects_are_followed_and_recorded(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        server.serve_file("/r/final.png", media["png"])
        server.serve("/r/2", status=307, headers={"Location": "final.png"})  # relative
        server.serve("/r/1", status=302, headers={"Location": server.url("/r/2", host="localhost")})
        fetched = run_fetch(server.url("/r/1"), tmp_path, policy)
        assert fetched.url == server.url("/r/final.png", host="localhost")
        assert server.hits_for("/r/2")[-1]["host"] == f"localhost:{server.port}"

    def test_too_many_redirects(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        server.serve("/r/loop", status=302, headers={"Location": "/r/loop"})
        before = len(server.hits_for("/r/loop"))
        error = failure(server.url("/r/loop"), tmp_path, dataclasses.replace(policy, max_redirects=3))
        assert (error.code, error.message) == ("InvalidURL", "more than 3 redirects")
        assert len(server.hits_for("/r/loop")) - before == 4

    def test_a_redirect_to_a_forbidden_address_is_refused_before_connecting(
        self, server: Server, tmp_path: Path, policy: FetchPolicy, loopback_only: list[str]
    ) -> None:
        server.serve("/r/metadata", status=301, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        error = failure(server.url("/r/metadata"), tmp_path, policy)
        assert (error.code, error.message) == (
            "InvalidURL",
            "address 169.254.169.254 is link-local; fetching from it is forbidden unless the operator allows it"
            " with the fetch_allow setting (for example REF2VIDEO_FETCH_ALLOW=169.254.169.254/32)",
        )
        assert loopback_only == [f"127.0.0.1:{server.port}"]

    @pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/"])
    def test_a_redirect_to_another_scheme_is_refused(
        self, server: Server, tmp_path: Path, policy: FetchPolicy, location: str
    ) -> None:
        server.serve("/r/scheme", status=302, headers={"Location": location})
        error = failure(server.url("/r/scheme"), tmp_path, policy)
        assert error.code == "InvalidURL" and "is not allowed; use http or https" in error.message


class TestPinning:
    def test_the_checked_address_is_the_one_connected_to(
        self,
        server: Server,
        media: dict[str, Path],
        tmp_path: Path,
        policy: FetchPolicy,
        fake_dns: FakeDNS,
        loopback_only: list[str],
    ) -> None:
        # DNS rebinding: the first answer passes the check, later ones point at the metadata
        # service. Only one lookup may happen, and the connection goes to its answer.
        answers = iter([["127.0.0.1"]])
        fake_dns.names["rebind.test"] = lambda: next(answers, ["169.254.169.254"])
        url = server.serve_file("/pin/a.png", media["png"]).replace("127.0.0.1", "rebind.test")
        assert run_fetch(url, tmp_path, policy).format == PNG
        assert fake_dns.calls == ["rebind.test"]
        assert loopback_only == [f"127.0.0.1:{server.port}"]
        assert server.hits_for("/pin/a.png")[-1]["host"] == f"rebind.test:{server.port}"

    def test_the_next_address_is_tried_when_one_refuses(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy, fake_dns: FakeDNS
    ) -> None:
        fake_dns.names["two.test"] = ["127.0.0.2", "127.0.0.1"]  # nothing listens on .2
        url = server.serve_file("/pin/b.png", media["png"]).replace("127.0.0.1", "two.test")
        assert run_fetch(url, tmp_path, policy).format == PNG

    def test_environment_proxies_are_ignored(
        self,
        server: Server,
        media: dict[str, Path],
        tmp_path: Path,
        policy: FetchPolicy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # A proxy would connect to the name itself, undoing the pinning.
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.9:9")
        monkeypatch.setenv("ALL_PROXY", "http://127.0.0.9:9")
        assert run_fetch(server.serve_file("/pin/c.png", media["png"]), tmp_path, policy).format == PNG


class TestHttps:
    def test_tls_verifies_the_real_name_while_connecting_to_the_ip(
        self, tls_server: TLSServer, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy, fake_dns: FakeDNS
    ) -> None:
        fake_dns.names["media.test"] = ["127.0.0.1"]
        tls_policy = dataclasses.replace(policy, verify=tls_server.client_context)
        tls_server.server.serve_file("/tls/a.png", media["png"])
        fetched = run_fetch(tls_server.server.url("/tls/a.png", host="media.test"), tmp_path, tls_policy)
        assert fetched.format == PNG
        assert tls_server.server_names[-1] == "media.test"
        assert tls_server.server.hits_for("/tls/a.png")[-1]["host"] == f"media.test:{tls_server.server.port}"

    def test_a_certificate_for_another_name_is_refused(
        self, tls_server: TLSServer, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy, fake_dns: FakeDNS
    ) -> None:
        fake_dns.names["other.test"] = ["127.0.0.1"]
        tls_policy = dataclasses.replace(policy, verify=tls_server.client_context)
        tls_server.server.serve_file("/tls/b.png", media["png"])
        error = failure(tls_server.server.url("/tls/b.png", host="other.test"), tmp_path, tls_policy)
        assert error.code == "InvalidURL"
        assert error.message.startswith("could not connect to other.test")
        assert "certificate" in error.message.lower() or "hostname" in error.message.lower()
        assert not tls_server.server.hits_for("/tls/b.png")


class TestStatus:
    @pytest.mark.parametrize("status", [403, 404, 500, 503])
    def test_an_error_status_is_invalid_url(
        self, server: Server, tmp_path: Path, policy: FetchPolicy, status: int
    ) -> None:
        error = failure(server.serve(f"/s/{status}", b"no", status=status), tmp_path, policy)
        assert (error.code, error.message) == ("InvalidURL", f"the server answered HTTP {status}")

    def test_a_closed_port_is_invalid_url(self, tmp_path: Path, policy: FetchPolicy) -> None:
        error = failure("http://127.0.0.1:9/x.png", tmp_path, policy)
        assert error.code == "InvalidURL" and error.message.startswith("could not connect to 127.0.0.1")

    def test_an_unknown_name_is_invalid_url(self, tmp_path: Path, policy: FetchPolicy, fake_dns: FakeDNS) -> None:
        fake_dns.names["nx.test"] = []
        error = failure("http://nx.test/a.png", tmp_path, policy)
        assert (error.code, error.message) == ("InvalidURL", "host 'nx.test' could not be resolved")


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("ftp://127.0.0.1/a.png", "scheme 'ftp' is not allowed; use http or https"),
            ("file:///etc/passwd", "scheme 'file' is not allowed; use http or https"),
            ("oss://bucket/key.png", "scheme 'oss' is not allowed; use http or https"),
            ("//127.0.0.1/a.png", "scheme '(none)' is not allowed; use http or https"),
            ("http:///a.png", "the URL has no host"),
            ("http://127.0.0.1:99999/a.png", "malformed URL: Port out of range 0-65535"),
            ("http://user:secret@127.0.0.1/a.png", "URLs with credentials are not accepted"),
        ],
    )
    def test_unusable_urls_fail_before_any_connection(
        self, url: str, message: str, tmp_path: Path, policy: FetchPolicy, no_connections: list[str]
    ) -> None:
        error = failure(url, tmp_path, policy)
        assert (error.code, error.message) == ("InvalidURL", message)
        assert no_connections == []


class TestConditional:
    def test_a_304_means_not_modified(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        body = media["png"].read_bytes()

        def respond(headers: dict[str, str]) -> Route | None:
            if headers.get("if-none-match") == '"v7"':
                return Route(status=304, headers={"ETag": '"v7"', "Cache-Control": "max-age=60"})
            return None

        url = server.serve("/c/a.png", body, headers={"ETag": '"v7"'}, respond=respond)
        result = asyncio.run(
            fetch_if_modified(url, tmp_path, Validators('"v7"', "Wed, 21 Oct 2015 07:28:00 GMT"), policy=policy)
        )
        assert isinstance(result, NotModified)
        assert result.headers["cache-control"] == "max-age=60"
        assert server.hits_for("/c/a.png")[-1]["if-modified-since"] == "Wed, 21 Oct 2015 07:28:00 GMT"
        assert not list(tmp_path.glob("*"))
        changed = asyncio.run(fetch_if_modified(url, tmp_path, Validators('"v6"'), policy=policy))
        assert isinstance(changed, Fetched) and changed.size == len(body)

    def test_a_plain_fetch_does_not_accept_a_304(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        error = failure(server.serve("/c/304", status=304), tmp_path, policy)
        assert (error.code, error.message) == ("InvalidURL", "the server answered HTTP 304")


def test_policy_defaults_and_validation() -> None:
    policy = FetchPolicy()
    assert (policy.connect_timeout, policy.total_timeout, policy.max_redirects) == (10.0, 120.0, 5)
    assert (policy.cap("image"), policy.cap("video"), policy.cap(None)) == (20 * 1024**2, 100 * 1024**2, 100 * 1024**2)
    assert policy.networks == ()
    with pytest.raises(ValueError):
        FetchPolicy(allow=("127.0.0.0/33",))
