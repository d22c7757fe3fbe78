"""media/ingest.py: a request's reference URLs in, checked `Reference`s out, all or nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from ipaddress import ip_address
from pathlib import Path

import pytest

from ref2video.errors import MediaError, TaskCanceled
from ref2video.media.cache import MediaCache
from ref2video.media.fetch import FetchPolicy
from ref2video.media.ingest import fetch_references, fetch_references_sync, input_video_seconds
from ref2video.media.reference import Reference
from ref2video.media.sniff import MOV, MP4, PNG

from .conftest import FakeDNS, Route, Server


def ingest(urls: list[str], work_dir: Path, policy: FetchPolicy, **options: object) -> list[Reference]:
    return asyncio.run(fetch_references(urls, work_dir=work_dir, policy=policy, **options))  # type: ignore[arg-type]


def refused(urls: list[str], work_dir: Path, policy: FetchPolicy, **options: object) -> MediaError:
    with pytest.raises(MediaError) as info:
        ingest(urls, work_dir, policy, **options)
    return info.value


def test_a_mixed_set_becomes_references_in_order(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    urls = [
        server.serve_file("/i/a.jpg", media["jpeg"], "image/jpeg"),
        server.serve_file("/i/a.mp4", media["mp4+aac"], "video/mp4"),
        server.serve_file("/i/rgba.png", media["rgba.png"], "image/png"),
        server.serve_file("/i/a.mov", media["mov"], "video/quicktime"),
        server.serve_file("/i/png-as-video.mp4", media["png"], "video/mp4"),  # the bytes decide
    ]
    refs = ingest(urls, tmp_path, policy)
    assert [(r.index, r.name, r.kind, r.format.name) for r in refs] == [
        (1, "character1", "image", "jpeg"),
        (2, "character2", "video", "mp4"),
        (3, "character3", "image", "png"),
        (4, "character4", "video", "mov"),
        (5, "character5", "image", "png"),
    ]
    assert [r.url for r in refs] == urls
    assert [r.path.name for r in refs] == [
        "reference1.jpg",
        "reference2.mp4",
        "reference3.png",
        "reference4.mov",
        "reference5.png",
    ]
    assert all(r.path.parent == tmp_path and r.path.stat().st_size == r.size for r in refs)
    video = refs[1]
    assert (video.width, video.height, video.fps, video.has_audio) == (320, 240, 10.0, True)
    assert video.duration == pytest.approx(2.0, abs=0.1)
    assert refs[3].has_audio is False
    assert refs[2].has_alpha and refs[2].image().mode == "RGBA"
    assert input_video_seconds(refs) == pytest.approx(4.0, abs=0.2)
    assert input_video_seconds(refs[:1]) == 0.0


def test_downloads_run_at_once(server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy) -> None:
    body = media["png"].read_bytes()
    # Each answer waits until all three requests are in: one after another, the first would wait
    # alone until the barrier breaks, and be answered 503. Generous limits: only that breaks it.
    barrier = threading.Barrier(3, timeout=20)

    def together(headers: dict[str, str]) -> Route:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return Route(b"not all at once", status=503)
        return Route(body)

    for n in range(3):
        server.routes[f"/i/together{n}.png"] = Route(respond=together)
    patient = dataclasses.replace(policy, read_timeout=30, total_timeout=60)
    refs = ingest([server.url(f"/i/together{n}.png") for n in range(3)], tmp_path, patient)
    assert [r.format for r in refs] == [PNG] * 3


def test_the_first_failure_cancels_the_rest(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    # A real PNG's bytes (no sniffing failure) and a deadline past the drip's 30 s: only the
    # 404's cancelling it can cut the drip short.
    drip = server.serve("/i/forever", media["png"].read_bytes(), behaviour="drip")
    missing = server.serve("/i/missing", b"gone", status=404)
    patient = dataclasses.replace(policy, total_timeout=60)
    error = refused([drip, missing], tmp_path, patient)
    assert (error.code, error.message) == ("InvalidURL", "reference 2: the server answered HTTP 404")
    assert server.hung_up_on("/i/forever")  # abandoned, not downloaded to its end
    assert not list(tmp_path.glob(".*.part"))


def test_the_sync_wrapper_runs_in_a_worker_thread(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    url = server.serve_file("/i/sync.mp4", media["mp4"])
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(fetch_references_sync([url], work_dir=tmp_path, policy=policy))
    )
    thread.start()
    thread.join(30)
    [refs] = results
    assert isinstance(refs, list) and refs[0].format == MP4


def test_the_sync_wrapper_stops_when_asked_to(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    url = server.serve("/i/sync-drip", media["png"].read_bytes(), behaviour="drip")
    # Asked to stop once the download is under way; a PNG's bytes and a deadline past the
    # drip's 30 s, so that only the request to stop can end it early.
    with pytest.raises(TaskCanceled):
        fetch_references_sync(
            [url], work_dir=tmp_path, policy=dataclasses.replace(policy, total_timeout=60),
            should_cancel=lambda: bool(server.hits_for("/i/sync-drip")),
        )
    assert server.hung_up_on("/i/sync-drip")
    assert not list(tmp_path.glob(".*.part"))


def test_the_deprecated_video_list_requires_videos(
    server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
) -> None:
    urls = [server.serve_file("/i/v.mov", media["mov+aac"]), server.serve_file("/i/v.png", media["png"])]
    error = refused(urls, tmp_path, policy, kind_hint="video")
    assert (error.code, error.message) == ("InvalidParameter", "reference 2: expected a video, got a PNG image")
    assert ingest(urls[:1], tmp_path, policy, kind_hint="video")[0].format == MOV


class TestCounts:
    def test_one_to_five_references(self, tmp_path: Path, policy: FetchPolicy, no_connections: list[str]) -> None:
        assert refused([], tmp_path, policy).message == "0 references given; 1 to 5 are allowed"
        assert (
            refused(["http://x.test/a.png"] * 6, tmp_path, policy).message == "6 references given; 1 to 5 are allowed"
        )
        assert no_connections == []

    def test_at_most_three_videos_by_their_bytes(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        # Named .png and served as images, they are videos all the same.
        urls = [server.serve_file(f"/i/count{n}.png", media["mp4"], "image/png") for n in range(4)]
        error = refused(urls, tmp_path, policy)
        assert (error.code, error.message) == (
            "InvalidParameter",
            "reference 4: more than 3 video references (at most 5 images and 3 videos)",
        )


MAPPED_LOOPBACK, MAPPED_METADATA = ip_address("::ffff:127.0.0.1"), ip_address("::ffff:a9fe:a9fe")
# Every spelling of a forbidden address, with no allow-list: refused before any connection.
FORBIDDEN_URLS = {
    "http://127.0.0.1/a.png": "address 127.0.0.1 is loopback",
    "http://localhost:8080/a.png": "host 'localhost' resolves to 127.0.0.1, which is loopback",
    "http://[::1]/a.png": "address ::1 is loopback",
    "http://10.0.0.1/a.png": "address 10.0.0.1 is private",
    "http://192.168.0.1/a.png": "address 192.168.0.1 is private",
    "http://169.254.169.254/latest/meta-data/": "address 169.254.169.254 is link-local",
    "http://0.0.0.0/a.png": "address 0.0.0.0 is unspecified",
    "http://2130706433/a.png": "host '2130706433' resolves to 127.0.0.1, which is loopback",
    "http://0177.0.0.1/a.png": "host '0177.0.0.1' resolves to 127.0.0.1, which is loopback",
    "http://0x7f.1/a.png": "host '0x7f.1' resolves to 127.0.0.1, which is loopback",
    "http://127.1/a.png": "host '127.1' resolves to 127.0.0.1, which is loopback",
    # (how Python prints a mapped address changed in 3.13)
    "http://[::ffff:127.0.0.1]/a.png": f"address {MAPPED_LOOPBACK} is IPv4-mapped loopback (127.0.0.1)",
    "http://[::ffff:a9fe:a9fe]/a.png": f"address {MAPPED_METADATA} is IPv4-mapped link-local (169.254.169.254)",
    "http://100.64.0.1/a.png": "address 100.64.0.1 is shared (carrier-grade NAT)",
    "http://224.0.0.1/a.png": "address 224.0.0.1 is multicast",
    "https://[fe80::1]/a.png": "address fe80::1 is link-local",
}


class TestHostileAddresses:
    @pytest.mark.parametrize("url", sorted(FORBIDDEN_URLS))
    def test_forbidden_addresses_are_refused_before_connecting(
        self, url: str, tmp_path: Path, no_connections: list[str]
    ) -> None:
        error = refused([url], tmp_path, FetchPolicy())
        assert error.code == "InvalidURL"
        assert error.message.startswith(f"reference 1: {FORBIDDEN_URLS[url]}; fetching from it is forbidden unless")
        assert "fetch_allow setting" in error.message
        assert no_connections == []

    def test_the_failing_reference_is_named(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy, loopback_only: list[str]
    ) -> None:
        good = server.serve_file("/h/good.png", media["png"])
        error = refused([good, "http://10.0.0.1/a.png"], tmp_path, policy)
        assert (error.code, error.message) == (
            "InvalidURL",
            "reference 2: address 10.0.0.1 is private; fetching from it is forbidden unless the operator allows"
            " it with the fetch_allow setting (for example REF2VIDEO_FETCH_ALLOW=10.0.0.1/32)",
        )

    def test_a_name_that_resolves_to_a_forbidden_address(
        self, tmp_path: Path, fake_dns: FakeDNS, no_connections: list[str]
    ) -> None:
        fake_dns.names["metadata.evil.test"] = ["93.184.216.34", "169.254.169.254"]
        error = refused(["https://metadata.evil.test/a.png"], tmp_path, FetchPolicy())
        assert (error.code, error.message) == (
            "InvalidURL",
            "reference 1: host 'metadata.evil.test' resolves to 169.254.169.254, which is link-local;"
            " fetching from it is forbidden unless the operator allows it with the fetch_allow setting"
            " (for example REF2VIDEO_FETCH_ALLOW=169.254.169.254/32)",
        )
        assert no_connections == []

    def test_a_redirect_to_a_forbidden_address(
        self, server: Server, tmp_path: Path, policy: FetchPolicy, loopback_only: list[str]
    ) -> None:
        # Loopback is opened for the test server only: the redirect target is not.
        only_server = dataclasses.replace(policy, allow=("127.0.0.1/32",))
        url = server.serve("/h/redirect", status=302, headers={"Location": "http://127.0.0.2:9/x"})
        error = refused([url], tmp_path, only_server)
        assert (error.code, error.message) == (
            "InvalidURL",
            "reference 1: address 127.0.0.2 is loopback; fetching from it is forbidden unless the operator"
            " allows it with the fetch_allow setting (for example REF2VIDEO_FETCH_ALLOW=127.0.0.2/32)",
        )
        assert loopback_only == [f"127.0.0.1:{server.port}"]

    def test_an_unresolvable_name(self, tmp_path: Path, fake_dns: FakeDNS) -> None:
        fake_dns.names["nowhere.test"] = []
        error = refused(["http://nowhere.test/a.png"], tmp_path, FetchPolicy())
        assert (error.code, error.message) == ("InvalidURL", "reference 1: host 'nowhere.test' could not be resolved")

    def test_too_many_redirects(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        server.serve("/h/loop", status=301, headers={"Location": "/h/loop"})
        error = refused([server.url("/h/loop")], tmp_path, policy)
        assert (error.code, error.message) == ("InvalidURL", "reference 1: more than 5 redirects")

    def test_a_bad_scheme(self, tmp_path: Path, no_connections: list[str]) -> None:
        error = refused(["file:///etc/passwd"], tmp_path, FetchPolicy())
        assert (error.code, error.message) == (
            "InvalidURL",
            "reference 1: scheme 'file' is not allowed; use http or https",
        )


class TestHostileContent:
    def test_an_oversized_body(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        small = dataclasses.replace(policy, max_video_bytes=32 * 1024)
        error = refused([server.serve_file("/h/big.mp4", media["mp4+aac"])], tmp_path, small)
        assert (error.code, error.message) == (
            "InvalidParameter",
            "reference 1: the file is larger than 0.03125 MB (the limit for videos)",
        )

    def test_a_slow_drip(self, server: Server, tmp_path: Path, policy: FetchPolicy) -> None:
        url = server.serve("/h/drip", b"\xff", behaviour="drip")
        error = refused([url], tmp_path, dataclasses.replace(policy, total_timeout=1.0))
        assert (error.code, error.message) == ("InvalidURL", "reference 1: the download did not finish within 1 s")

    def test_text_served_as_png(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        error = refused([server.serve_file("/h/text.png", media["text"], "image/png")], tmp_path, policy)
        assert error.code == "InvalidParameter"
        assert error.message.startswith("reference 1: unsupported format")

    def test_a_png_served_as_mp4_is_an_image(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        [ref] = ingest([server.serve_file("/h/png.mp4", media["png"], "video/mp4")], tmp_path, policy)
        assert (ref.kind, ref.format) == ("image", PNG)

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("truncated.mp4", "reference 1: the video is broken or truncated"),
            ("cut.mp4", "reference 1: the video is truncated"),
            ("bomb.png", "reference 1: the image declares too many pixels"),
            ("empty", "reference 1: the file is empty"),
            ("small.png", "reference 1: the image is 120x90 px, below 240 px per side"),
            ("long.mp4", "reference 1: the video is 31 s long, above 30 s"),
            ("short.mp4", "reference 1: the video is 0.5 s long, below 1 s"),
        ],
    )
    def test_bad_files(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy, name: str, message: str
    ) -> None:
        error = refused([server.serve_file(f"/h/{name}", media[name])], tmp_path, policy)
        assert error.code == "InvalidParameter"
        assert error.message.startswith(message)


class TestCache:
    def test_a_fresh_copy_is_reused_without_a_request(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        cache = MediaCache(tmp_path / "cache")
        url = server.serve_file("/cache/fresh.png", media["png"], headers={"Cache-Control": "max-age=300"})
        first = ingest([url], tmp_path / "w1", policy, cache=cache)
        second = ingest([url, url], tmp_path / "w2", policy, cache=cache)
        assert len(server.hits_for("/cache/fresh.png")) == 1
        assert [r.path for r in second] == [tmp_path / "w2" / "reference1.png", tmp_path / "w2" / "reference2.png"]
        assert second[0].sha256 == first[0].sha256 and second[0].image().size == (320, 240)

    def test_a_stale_copy_is_revalidated(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        cache = MediaCache(tmp_path / "cache")

        def respond(headers: dict[str, str]) -> Route | None:
            return Route(status=304, headers={"ETag": '"e1"'}) if headers.get("if-none-match") == '"e1"' else None

        url = server.serve_file(
            "/cache/stale.mp4", media["mp4"], headers={"Cache-Control": "no-cache", "ETag": '"e1"'}, respond=respond
        )
        ingest([url], tmp_path / "w1", policy, cache=cache)
        [ref] = ingest([url], tmp_path / "w2", policy, cache=cache)
        hits = server.hits_for("/cache/stale.mp4")
        assert len(hits) == 2 and "if-none-match" not in hits[0] and hits[1]["if-none-match"] == '"e1"'
        assert ref.format == MP4 and ref.path.read_bytes() == media["mp4"].read_bytes()

    def test_a_refused_file_is_not_cached(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        cache = MediaCache(tmp_path / "cache")
        url = server.serve_file("/cache/small.png", media["small.png"], headers={"Cache-Control": "max-age=300"})
        refused([url], tmp_path / "w1", policy, cache=cache)
        assert cache.lookup(url) is None

    def test_cached_copies_obey_todays_caps(
        self, server: Server, media: dict[str, Path], tmp_path: Path, policy: FetchPolicy
    ) -> None:
        cache = MediaCache(tmp_path / "cache")
        url = server.serve_file("/cache/cap.png", media["png"], headers={"Cache-Control": "max-age=300"})
        ingest([url], tmp_path / "w1", policy, cache=cache)
        error = refused([url], tmp_path / "w2", dataclasses.replace(policy, max_image_bytes=100), cache=cache)
        assert error.message.startswith("reference 1: the file is larger than")
