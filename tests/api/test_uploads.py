"""Local files: the SDK's getPolicy + multipart flow, our plain upload route, oss:// per owner."""

from __future__ import annotations

import base64
import contextlib
import io
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path

import dashscope
import httpx
from dashscope import VideoSynthesis
from PIL import Image
from sqlalchemy import select

from ref2video.protocol import MAX_UPLOAD_BYTES
from ref2video.storage.policy import PolicySigner
from ref2video.app.keys import revoke_key
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
    stored = server.service.uploads.local_path(blob)  # the bytes, wherever the storage keeps them
    assert stored is not None and stored.read_bytes() == image.read_bytes()
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
    policy = {"action": "getPolicy", "model": "wan2.6-r2v"}
    assert httpx.get(f"{server.url}/api/v1/uploads", params=policy).status_code == 401
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

    r = server.client().post("/api/v1/uploads", content=body(),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    # Cut off while streaming, at the limit, and nothing of it kept.
    assert r.status_code == 413 and r.json()["code"] == "RequestTooLarge"
    assert r.json()["message"] == f"the file is over the limit of {MAX_UPLOAD_BYTES} bytes"
    assert not stored_blobs(server) and not scratch_files(server)


BOUNDARY = "r2vtestboundary"


def certificate_fields(cert: dict, name: str, **overrides: str) -> dict[str, str]:
    """The SDK's fields for an upload with `cert`, in the SDK's order."""
    return {
        "OSSAccessKeyId": cert["oss_access_key_id"], "Signature": cert["signature"], "policy": cert["policy"],
        "key": f"{cert['upload_dir']}/{name}", "x-oss-object-acl": cert["x_oss_object_acl"],
        "x-oss-forbid-overwrite": cert["x_oss_forbid_overwrite"], "success_action_status": "200",
        "x-oss-content-type": "image/png", **overrides,
    }


def multipart_fields(fields: dict[str, str]) -> bytes:
    return b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items())


def file_head(name: str) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()


END = f"\r\n--{BOUNDARY}--\r\n".encode()


def send_until_answered(server: LiveServer, prefix: bytes, file_size: int) -> tuple[int, bytes]:
    """POST a multipart body (`prefix`, then `file_size` zero bytes, then the closing boundary) to
    the certificate route over a raw socket, sending only while the server takes it in and
    stopping as soon as an answer arrives: (file bytes sent, the answer)."""
    host, port = server.url.removeprefix("http://").split(":")
    length = len(prefix) + file_size + len(END)
    head = (f"POST /api/v1/uploads/oss HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
    chunk = b"\0" * (64 << 10)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock, selectors.DefaultSelector() as sel:
        # A small send buffer, so what counts as sent here is close to what the server took in.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.sendall(head + prefix)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while sent < file_size:
            events = sel.select(30)
            assert events, f"the server neither answered nor read on after {sent} bytes of the file"
            if events[0][1] & selectors.EVENT_READ:
                break
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(chunk[:file_size - sent])
        sock.setblocking(True)
        if sent == file_size:
            sock.sendall(END)
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.endswith(b"}")):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return sent, answer


def scratch_files(server: LiveServer) -> list[Path]:
    scratch = server.service.settings.scratch_dir
    return [p for p in scratch.rglob("*") if p.is_file()] if scratch.exists() else []


def test_a_bogus_certificate_is_refused_before_the_file_is_read(make_server) -> None:  # type: ignore[no-untyped-def]
    """No key is needed to post to the certificate route, so nothing of the file may be taken in
    (or spooled to disk) before the certificate is checked."""
    server = make_server(workers=0)
    cert = policy(server)
    bogus = dict(cert, policy=cert["policy"][:-8] + "AAAAAAA=")
    size = 100 << 20
    prefix = multipart_fields(certificate_fields(bogus, "big.mp4")) + file_head("big.mp4")
    sent, answer = send_until_answered(server, prefix, size)
    assert answer.startswith(b"HTTP/1.1 403") and b"AccessDenied" in answer, answer[:300]
    assert sent < 8 << 20, f"the client sent {sent} bytes of {size} before the answer"
    assert not scratch_files(server)


def small_certificate(server: LiveServer, max_bytes: int) -> dict:
    """A genuine certificate for the server's key that allows files of at most `max_bytes`."""
    principal = server.service.auth.principal(server.key)
    assert principal is not None and server.service.policy is not None
    signed, signature, grant = server.service.policy.issue(principal.owner, principal.key_id, "wan2.6-r2v-flash",
                                                           max_bytes)
    return dict(policy(server), policy=signed, signature=signature, upload_dir=grant.upload_dir)


def stored_blobs(server: LiveServer) -> list[str]:
    """The upload storage's objects, wherever it keeps them."""
    return [item.name for item in server.service.uploads.listing()]


def test_a_certificate_bounds_the_file_size(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = small_certificate(server, 1000)
    assert post_with_policy(cert, "fits.bin", b"x" * 1000).status_code == 200
    over = post_with_policy(cert, "over.bin", b"x" * 1001)
    assert over.status_code == 413 and over.json()["code"] == "RequestTooLarge"
    declared = post_with_policy(cert, "declared.bin", b"x" * (1 << 20))  # refused from Content-Length
    assert declared.status_code == 413 and declared.json()["code"] == "RequestTooLarge"

    def streamed() -> Iterator[bytes]:  # no Content-Length: cut off by counting
        yield multipart_fields(certificate_fields(cert, "streamed.bin")) + file_head("streamed.bin")
        for _ in range(20):
            yield b"x" * (1 << 20)
        yield END

    r = httpx.post(cert["upload_host"], content=streamed(),
                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 413 and r.json()["code"] == "RequestTooLarge"
    assert len(stored_blobs(server)) == 1 and not scratch_files(server)
    with server.service.db.connect() as conn:
        assert conn.execute(select(Upload.key, Upload.content_type)).all() == [
            (f"{cert['upload_dir']}/fits.bin", "image/png")]  # the x-oss-content-type field


def test_a_revoked_keys_certificates_stop_working_at_once(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    key = server.new_key()
    cert = policy(server, key)
    assert revoke_key(server.service.db, cert["oss_access_key_id"])
    r = post_with_policy(cert, "a.png", png_bytes())
    assert r.status_code == 403 and r.json()["code"] == "AccessDenied" and "revoked" in r.json()["message"]
    assert not stored_blobs(server) and not scratch_files(server)


def test_junk_certificates_are_refused_not_errors(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = policy(server)
    for junk in ({"Signature": "é" * 44}, {"Signature": "签名"}, {"Signature": "x" * 5000}, {"Signature": ""},
                 {"policy": "%%% not base64 %%%"}, {"policy": "é" + cert["policy"]}, {"policy": ""}):
        r = post_with_policy(cert, "a.png", png_bytes(), **junk)
        assert r.status_code == 403 and r.json()["code"] == "AccessDenied", (junk, r.text)
    assert not stored_blobs(server)


def test_the_signer_refuses_any_junk() -> None:
    signer = PolicySigner("secret")
    signed, signature, grant = signer.issue("default", "k1", "wan2.6-r2v", 1000)
    assert signer.verify(signed, signature) == grant
    for policy_text, signature_text in ((signed, "é" * 44), (signed, "\udcff"), ("\udcff", signature),
                                        (signed, "A" * 1_000_000), ("A" * 1_000_000, signature),
                                        ("not base64!", signature), (signed, None), (None, signature),
                                        (signed.encode(), signature)):
        assert signer.verify(policy_text, signature_text) is None
    # Signed, but not the JSON `issue` makes: still no grant, and no exception.
    for body in (b"[]", b"{}", b"not json", b'{"owner": 1}', "\u00e9".encode("latin-1")):
        forged = base64.b64encode(body).decode()
        assert signer.verify(forged, signer._sign(forged)) is None


def test_the_file_must_come_after_the_certificate(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = policy(server)
    body = (file_head("a.png") + png_bytes() + b"\r\n" + multipart_fields(certificate_fields(cert, "a.png"))
            + f"--{BOUNDARY}--\r\n".encode())
    r = httpx.post(cert["upload_host"], content=body,
                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 403 and r.json()["code"] == "AccessDenied" and "before the file" in r.json()["message"]
    assert not stored_blobs(server)


def test_malformed_forms_are_invalid_parameters(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    cert = policy(server)
    fields = certificate_fields(cert, "a.png")
    multipart = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    bodies = {
        "garbage": b"this is not a multipart body at all",
        "no closing boundary": multipart_fields(fields),
        "cut in the file": multipart_fields(fields) + file_head("a.png") + b"half a file",
        "a part without a name": f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode() + END[2:],
        "too many fields": multipart_fields({f"f{i}": "x" for i in range(21)}) + END[2:],
        "a huge field": multipart_fields({"policy": "A" * (64 << 10)}) + END[2:],
        "a field twice": multipart_fields(fields) + multipart_fields({"key": "other"}) + END[2:],
    }
    for what, body in bodies.items():
        r = httpx.post(cert["upload_host"], content=body, headers=multipart)
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", (what, r.text)
    no_boundary = httpx.post(cert["upload_host"], content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400
    plain = server.client().post("/api/v1/uploads", content=b"--nope\r\n\r\n", headers=multipart)
    assert plain.status_code == 400 and plain.json()["code"] == "InvalidParameter"
    assert not stored_blobs(server) and not scratch_files(server)


def test_a_content_type_that_is_not_a_type_is_stored_as_octet_stream(make_server) -> None:  # type: ignore[no-untyped-def]
    """A NUL in either route's content type reached PostgreSQL after the file was stored: a 500
    and a file nobody knew of. Such a type (not printable ASCII, or over 128 characters) is
    taken as application/octet-stream before anything is stored."""
    server = make_server(workers=0)
    cert = policy(server)
    kinds = {"nul.png": "image/png\x00", "control.png": "image/\x01png", "long.png": "image/" + "x" * 200}
    for name, kind in kinds.items():
        r = post_with_policy(cert, name, png_bytes(), **{"x-oss-content-type": kind})
        assert r.status_code == 200, r.text
    raw = (file_head("plain.png").replace(b"application/octet-stream", b"image/png\x00x")
           + png_bytes() + END)
    plain = server.client().post("/api/v1/uploads", content=raw,
                                 headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert plain.status_code == 200, plain.text
    with server.service.db.connect() as conn:
        stored = dict(conn.execute(select(Upload.key, Upload.content_type)).all())
    assert len(stored) == 4 and set(stored.values()) == {"application/octet-stream"}
    assert len(stored_blobs(server)) == 4 and not scratch_files(server)
