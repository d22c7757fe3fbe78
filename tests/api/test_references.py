"""Hostile references through the whole service: each fails its task with the provider's code
and a message naming the reference and the rule, and the server keeps serving."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.http_server import Server
from tests.live import LiveServer, make_body, ref_url
from tests.media.media_files import make_video, png_header_only


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("hostile")
    server = Server()
    small = io.BytesIO()
    Image.new("RGB", (120, 90)).save(small, "PNG")
    server.serve("/small.png", small.getvalue(), headers={"Content-Type": "image/png"})
    server.serve("/bomb.png", png_header_only(100_000, 100_000), headers={"Content-Type": "image/png"})
    whole = make_video(root / "t.mp4", 2, audio=True).read_bytes()
    server.serve("/truncated.mp4", whole[: len(whole) * 2 // 3], headers={"Content-Type": "video/mp4"})
    server.serve("/empty.png", b"", headers={"Content-Type": "image/png"})
    server.serve("/lie.png", b"<html>surprise</html>" * 10, headers={"Content-Type": "image/png"})
    server.serve("/missing.png", b"gone", status=404)
    server.serve("/to-metadata", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    for i in range(8):
        server.serve(f"/loop{i}", status=302, headers={"Location": server.url(f"/loop{i + 1}")})
    # An MP4 head, then bytes that never end: cut off at the 100 MB video cap.
    server.serve("/endless.mp4", whole[:32].ljust(65536, b"\0"), headers={"Content-Type": "video/mp4"},
                 behaviour="endless")
    yield server  # type: ignore[misc]
    server.close()


CASES = [
    ("/small.png", "InvalidParameter", "below 240"),
    ("/bomb.png", "InvalidParameter", "100000"),
    ("/truncated.mp4", "InvalidParameter", "reference 1"),
    ("/empty.png", "InvalidParameter", "empty"),
    ("/lie.png", "InvalidParameter", "reference 1"),
    ("/missing.png", "InvalidURL", "404"),
    ("/to-metadata", "InvalidURL", "169.254.169.254"),
    ("/loop0", "InvalidURL", "redirect"),
    ("/endless.mp4", "InvalidParameter", "larger than"),
]


@pytest.mark.parametrize(("path", "code", "words"), CASES)
def test_a_hostile_reference_fails_its_task_clearly(server: LiveServer, hostile: Server, path: str, code: str,
                                                    words: str) -> None:
    task_id = server.create(make_body(urls=[ref_url("a.png"), hostile.url(path)]) if path == "/bomb.png"
                            else make_body(urls=[hostile.url(path)]))
    out = server.wait(task_id, timeout=60)["output"]
    assert out["task_status"] == "FAILED"
    assert out["code"] == code, out
    assert words.lower() in out["message"].lower(), out
    assert "reference" in out["message"]
    assert "Traceback" not in out["message"] and "/tmp" not in out["message"]
    health = server.client().get("/health")
    assert health.status_code == 200
    # And it keeps serving: the next good task succeeds.
    assert server.wait(server.create())["output"]["task_status"] == "SUCCEEDED"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "0.0.0.0", "2130706433",
                                  "0177.0.0.1", "[::ffff:127.0.0.1]", "100.64.0.1"])
def test_forbidden_addresses_are_refused_without_an_allow_list(make_server, host: str) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = make_server(fetch_allow=[])
    out = server.wait(server.create(make_body(urls=[f"http://{host}:9/a.png"])), timeout=30)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidURL", out
    assert "reference 1" in out["message"]


def test_the_seed_documents_four_references_are_fetched_in_order(server: LiveServer) -> None:
    from tests.live import seed_body

    body = seed_body()
    body["input"]["prompt"] += " refs=video,video,image,image"
    out = server.wait(server.create(body), timeout=60)
    assert out["output"]["task_status"] == "SUCCEEDED", out
    # Two reference videos of 3 s and 2 s: 5 billed seconds, as whole numbers.
    assert out["usage"]["input_video_duration"] == 5 and out["usage"]["duration"] == 15


def test_a_local_media_server_is_refused_with_the_setting_that_allows_it(make_server) -> None:  # type: ignore[no-untyped-def]
    """A first local test (references on localhost) is refused by default, and the message
    says how to allow it."""
    server = make_server(fetch_allow=[])
    task_id = server.create(make_body(urls=[ref_url("a.png")]))
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidURL"
    assert "loopback" in out["message"] and "REF2VIDEO_FETCH_ALLOW=127.0.0.1/32" in out["message"]
