"""Local files: the SDK's getPolicy + multipart flow, our plain upload route, oss:// per owner."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import dashscope
import httpx
from dashscope import VideoSynthesis
from PIL import Image
from sqlalchemy import select

from ref2video.store.models import Task, Upload
from tests.live import LiveServer, make_body


def png_bytes(size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def policy(server: LiveServer, key: str | None = None) -> dict:
    r = server.client(key).get("/api/v1/uploads", params={"action": "getPolicy", "model": "wan2.6-r2v-flash"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def post_with_policy(cert: dict, name: str, content: bytes, **overrides: str) -> httpx.Response:
    form = {
        "OSSAccessKeyId": cert["oss_access_key_id"], "Signature": cert["signature"], "policy": cert["policy"],
        "key": f"{cert['upload_dir']}/{name}", "x-oss-object-acl": cert["x_oss_object_acl"],
        "x-oss-forbid-overwrite": cert["x_oss_forbid_overwrite"], "success_action_status": "200",
        "x-oss-content-type": "image/png", **overrides,
    }
    return httpx.post(cert["upload_host"], data=form, files={"file": (name, content)})


def test_the_certificate_has_the_providers_shape(server: LiveServer) -> None:
    """The provider answers the certificate under `data`; independent clients read
    answer["data"]["upload_host"], the official SDK reads `data` when there is no `output`."""
    r = server.client().get("/api/v1/uploads", params={"action": "getPolicy", "model": "wan2.6-r2v-flash"})
    answer = r.json()
    assert set(answer) == {"request_id", "data"}
    assert set(answer["data"]) == {
        "policy", "signature", "upload_dir", "upload_host", "expire_in_seconds", "max_file_size_mb",
        "capacity_limit_mb", "oss_access_key_id", "x_oss_object_acl", "x_oss_forbid_overwrite"}
    cert = answer["data"]
    assert cert["upload_host"] == f"{server.url}/api/v1/uploads/oss"
    assert isinstance(cert["expire_in_seconds"], int) and cert["max_file_size_mb"] == 100
    assert (cert["x_oss_object_acl"], cert["x_oss_forbid_overwrite"]) == ("private", "true")
    # An independent client's upload, from the certificate alone.
    assert post_with_policy(cert, "hero.png", png_bytes()).status_code == 200


def test_the_official_sdk_uploads_file_references(server: LiveServer, tmp_path: Path) -> None:
    image = tmp_path / "hero.png"
    image.write_bytes(png_bytes())
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{server.url}/api/v1"
    try:
        created = VideoSynthesis.async_call(
            model="wan2.6-r2v-flash", prompt="character1 walks refs=image", reference_urls=[f"file://{image}"],
            size="1280*720", api_key=server.key,
        )
    finally:
        dashscope.base_http_api_url = saved
    assert created.status_code == 200, created
    task_id = created.output.task_id
    with server.service.db.connect() as conn:
        spec = conn.execute(select(Task.spec).where(Task.id == task_id)).scalar_one()
        (url,) = spec["reference_urls"]
        assert url.startswith("oss://ref2video-uploads/") and url.endswith("/hero.png")
        blob = conn.execute(select(Upload.blob).where(Upload.key == url[6:])).scalar_one()
    assert (server.service.settings.data_dir / "uploads" / blob).read_bytes() == image.read_bytes()
    assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"


def test_oss_keys_resolve_only_for_their_owner(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = policy(server)
    assert post_with_policy(cert, "a.png", png_bytes()).status_code == 200
    url = f"oss://{cert['upload_dir']}/a.png"
    assert server.client().post("/task/bailian/ref2video", json=make_body(urls=[url])).status_code == 200
    colleague = server.new_key(owner="default")
    assert server.client(colleague).post("/task/bailian/ref2video", json=make_body(urls=[url])).status_code == 200
    stranger = server.new_key(owner="other")
    r = server.client(stranger).post("/task/bailian/ref2video", json=make_body(urls=["https://x.test/a.png", url]))
    assert r.status_code == 400 and r.json()["code"] == "InvalidURL" and "reference 2" in r.json()["message"]
    r = server.client().post("/task/bailian/ref2video", json=make_body(urls=["oss://never/uploaded.png"]))
    assert r.status_code == 400 and r.json()["code"] == "InvalidURL" and "upload the file first" in r.json()["message"]


def test_certificates_are_checked(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = policy(server)
    forged = post_with_policy(cert, "a.png", png_bytes(), Signature="AAAA" + cert["signature"][4:])
    assert forged.status_code == 403 and forged.json()["code"] == "AccessDenied"
    outside = post_with_policy(cert, "a.png", png_bytes(), key="ref2video-uploads/someone-else/a.png")
    assert outside.status_code == 403
    climbing = post_with_policy(cert, "a.png", png_bytes(), key=f"{cert['upload_dir']}/../x/a.png")
    assert climbing.status_code == 403
    assert post_with_policy(cert, "a.png", png_bytes()).status_code == 200
    again = post_with_policy(cert, "a.png", png_bytes())
    assert again.status_code == 400 and "never overwrite" in again.json()["message"]
    empty = post_with_policy(cert, "b.png", b"")
    assert empty.status_code == 400 and "empty" in empty.json()["message"]
    server.service.policy.ttl_seconds = -1  # type: ignore[union-attr]
    stale = policy(server)
    assert post_with_policy(stale, "c.png", png_bytes()).status_code == 403


def test_get_policy_needs_a_key_and_a_served_model(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    assert httpx.get(f"{server.url}/api/v1/uploads", params={"action": "getPolicy", "model": "wan2.6-r2v"}).status_code == 401
    r = server.client().get("/api/v1/uploads", params={"action": "getPolicy", "model": "nope"})
    assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"
    r = server.client().get("/api/v1/uploads", params={"action": "other", "model": "wan2.6-r2v"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


def test_the_plain_upload_route(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    r = server.client().post("/api/v1/uploads", files={"file": ("my photo!.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["url"].startswith("oss://") and out["url"].endswith("/my_photo_.png") and out["size"] > 0
    assert server.client().post("/task/bailian/ref2video", json=make_body(urls=[out["url"]])).status_code == 200
    no_file = server.client().post("/api/v1/uploads", data={"x": "y"})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["message"]
    assert httpx.post(f"{server.url}/api/v1/uploads", files={"file": ("a.png", b"x")}).status_code == 401


def test_oversized_uploads_are_cut_off(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    # A declared size over the limit is refused from the headers, before any body is read.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 209715200\r\n\r\n").encode())
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413") and "RequestTooLarge" in head

    boundary = "xyz"

    def body():  # 101 MiB of file, streamed without a Content-Length
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
               "Content-Type: video/mp4\r\n\r\n").encode()
        chunk = b"\0" * (1 << 20)
        for _ in range(101):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    started = time.monotonic()
    r = server.client().post("/api/v1/uploads", content=body(),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["code"] == "RequestTooLarge"
    assert time.monotonic() - started < 30
    assert not list((server.service.settings.data_dir / "uploads").glob("*"))
