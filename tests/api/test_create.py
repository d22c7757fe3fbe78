"""Creating tasks over real HTTP: both routes, every kind of bad input, and keys."""

from __future__ import annotations

import time
import httpx
import pytest

from tests.live import LiveServer
from tests.test_spec import SEED_BODY

NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}


def assert_error(r: httpx.Response, status: int, code: str, words: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == code and words in body["message"], body
    assert len(body["request_id"]) == 36


@pytest.fixture
def idle(make_server) -> LiveServer:  # type: ignore[no-untyped-def]
    """A server with no workers: created tasks stay PENDING."""
    return make_server(workers=0)


def test_gateway_create_answers_pending_at_once(idle: LiveServer) -> None:
    r = idle.client().post("/task/bailian/ref2video", json=SEED_BODY)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"request_id", "output"}
    assert body["output"]["task_status"] == "PENDING"
    assert len(body["output"]["task_id"]) == 36
    seen = idle.get(body["output"]["task_id"])["output"]
    assert seen["task_status"] == "PENDING" and seen["queue_position"] == 0


def test_native_create_needs_the_async_header(idle: LiveServer) -> None:
    client = idle.client()
    assert_error(client.post(NATIVE, json=SEED_BODY), 403, "AccessDenied", "synchronous")
    r = client.post(NATIVE, json=SEED_BODY, headers=ASYNC)
    assert r.status_code == 200 and r.json()["output"]["task_status"] == "PENDING"


def test_keys_are_checked_first(idle: LiveServer) -> None:
    bare = httpx.Client(base_url=idle.url)
    assert_error(bare.post("/task/bailian/ref2video", json=SEED_BODY), 401, "InvalidApiKey", "No API-key provided.")
    assert_error(bare.post(NATIVE, json={}, headers=ASYNC), 401, "InvalidApiKey", "No API-key")
    assert_error(bare.get("/api/v1/tasks/x"), 401, "InvalidApiKey")
    for wrong in ("r2v-nope-nope", "sk-123", "Bearer", idle.key[:-1] + ("A" if idle.key[-1] != "A" else "B")):
        r = bare.post("/task/bailian/ref2video", json=SEED_BODY, headers={"Authorization": f"Bearer {wrong}"})
        assert_error(r, 401, "InvalidApiKey", "Invalid API-key provided.")
    bare.close()


def test_a_key_revoked_elsewhere_stops_working(idle: LiveServer) -> None:
    """Revoked in the database (as `ref2video keys revoke` does from another process): this
    server stops taking the key once what it remembers of it is stale (a second)."""
    from ref2video.app.keys import revoke_key
    from ref2video.store.keys import parse_key

    key = idle.new_key()
    client = idle.client(key)
    assert client.post("/task/bailian/ref2video", json=SEED_BODY).status_code == 200
    assert revoke_key(idle.service.db, parse_key(key)[0])  # type: ignore[index]
    deadline = time.monotonic() + 30
    while client.get("/api/v1/tasks").status_code == 200:  # a wait on the condition, not a timing check
        assert time.monotonic() < deadline, "the revoked key was still taken after 30 s"
        time.sleep(0.05)
    assert_error(client.post("/task/bailian/ref2video", json=SEED_BODY), 401, "InvalidApiKey")
    assert_error(client.get("/api/v1/tasks"), 401, "InvalidApiKey")


def test_the_authenticator_forgets_a_key_after_its_time_to_live(idle: LiveServer) -> None:
    from ref2video.app.auth import Authenticator
    from ref2video.app.keys import revoke_key
    from ref2video.store.keys import parse_key

    now = [1000.0]
    auth = Authenticator(idle.service.db, ttl=1.0, clock=lambda: now[0])
    key = idle.new_key()
    principal = auth.principal(key)
    assert principal is not None and auth.remembered(key) == principal
    assert auth.principal(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # the secret is checked each time
    assert revoke_key(idle.service.db, parse_key(key)[0])  # type: ignore[index]
    now[0] += 0.9
    assert auth.principal(key) == principal  # remembered for up to a second
    now[0] += 0.2
    assert auth.remembered(key) is None and auth.principal(key) is None


@pytest.mark.parametrize(
    ("content", "status", "code", "words"),
    [
        (b"{not json", 400, "InvalidParameter", "not valid JSON"),
        (b"", 400, "InvalidParameter", "empty"),
        (b"[1, 2]", 400, "InvalidParameter", "JSON object"),
        (b"\xff\xfe\x00", 400, "InvalidParameter", "not valid JSON"),
        (b'{"model": "wan2.6-r2v-flash", "input": {"prompt": 7}}', 400, "InvalidParameter", "input.prompt"),
        (b'{"model": "no-such-model", "input": {}}', 404, "ModelNotFound", "no-such-model"),
        (b'{"model": "wan2.6-r2v", "input": {"prompt": "x", "reference_urls": ["gopher://a/b"]}}', 400, "InvalidURL",
         "reference 1"),
    ],
)
def test_bad_bodies_get_their_own_clear_4xx(idle: LiveServer, content: bytes, status: int, code: str,
                                            words: str) -> None:
    r = idle.client().post("/task/bailian/ref2video", content=content, headers={"Content-Type": "application/json"})
    assert_error(r, status, code, words)


def test_huge_bodies_are_refused_before_they_are_read(idle: LiveServer) -> None:
    huge = b'{"model": "' + b"x" * (2 << 20) + b'"}'
    r = idle.client().post("/task/bailian/ref2video", content=huge)
    assert_error(r, 413, "RequestTooLarge", "limit")

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(40):
            yield b" " * 65536

    r = idle.client().post("/task/bailian/ref2video", content=chunks())
    assert_error(r, 413, "RequestTooLarge", "limit")


def test_unknown_routes_and_methods_answer_in_the_envelope(idle: LiveServer) -> None:
    client = idle.client()
    assert_error(client.get("/api/v1/nothing"), 404, "NotFound")
    assert_error(client.put("/task/bailian/ref2video", json={}), 405, "MethodNotAllowed")


def test_the_seed_is_reported_and_a_given_one_kept(idle: LiveServer) -> None:
    task_id = idle.create(seed=1234)
    assert idle.get(task_id)["output"]["seed"] == 1234
    other = idle.get(idle.create())["output"]["seed"]
    assert isinstance(other, int) and 0 <= other <= 2147483647


def test_queue_positions_count_older_pending_tasks(idle: LiveServer) -> None:
    ids = [idle.create() for _ in range(3)]
    assert [idle.get(i)["output"]["queue_position"] for i in ids] == [0, 1, 2]


def test_openapi_document_and_docs_are_served(idle: LiveServer) -> None:
    client = idle.client()
    spec = client.get("/openapi.json").json()
    for path in ("/task/bailian/ref2video", "/task/{task_id}", NATIVE, "/api/v1/tasks/{task_id}",
                 "/api/v1/tasks/{task_id}/cancel", "/api/v1/tasks"):
        assert path in spec["paths"], path
    body_schema = spec["components"]["schemas"]["CreateBody"]
    assert {"model", "input"} <= set(body_schema["required"])
    for path in ("/task/bailian/ref2video", NATIVE):  # ref2video's own headers on both create routes
        headers = {p["name"]: p for p in spec["paths"][path]["post"]["parameters"] if p["in"] == "header"}
        assert {"Idempotency-Key", "X-Ref2video-Callback"} <= set(headers), path
        assert headers["X-Ref2video-Callback"]["required"] is False
        assert "docs/webhooks.md" in headers["X-Ref2video-Callback"]["description"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_the_document_describes_what_routes_read_themselves(idle: LiveServer) -> None:
    """Routes parse their own input, so FastAPI cannot see it: each item the document must
    still name (the fuzz test only sends what is named), written down in api/openapi.py."""
    paths = idle.client().get("/openapi.json").json()["paths"]
    listed = {p["name"]: p for p in paths["/api/v1/tasks"]["get"]["parameters"] if p["in"] == "query"}
    assert {"page_no", "page_size", "status", "model_name", "start_time", "end_time", "task_id_prefix"} <= set(listed)
    assert listed["page_size"]["schema"]["maximum"] == 100 and listed["page_no"]["schema"]["minimum"] == 1
    assert listed["start_time"]["schema"]["pattern"] == listed["end_time"]["schema"]["pattern"] == "^[0-9]{14}$"
    native = {p["name"]: p for p in paths[NATIVE]["post"]["parameters"] if p["in"] == "header"}
    assert native["X-DashScope-Async"]["required"] is True
    assert native["X-DashScope-Async"]["schema"]["enum"] == ["enable"]
    uploads = {"/api/v1/uploads": {"file"}, "/api/v1/uploads/oss": {"policy", "Signature", "key", "file"}}
    for path, fields in uploads.items():
        body = paths[path]["post"]["requestBody"]
        schema = body["content"]["multipart/form-data"]["schema"]
        assert body["required"] is True and set(schema["required"]) == fields, path
        assert schema["properties"]["file"]["format"] == "binary", path
    assert {"403", "404"} <= set(paths["/v1/results/{key}"]["get"]["responses"])
    assert "403" in paths["/api/v1/uploads/oss"]["post"]["responses"]
    assert "404" in paths["/api/v1/uploads"]["get"]["responses"]  # a model not served
    for path, method in (("/admin/v1/accounts", "post"), ("/admin/v1/accounts/{owner}/credit", "post"),
                         ("/admin/v1/accounts/{owner}/limits", "put"), ("/admin/v1/keys", "post"),
                         ("/admin/v1/keys/{key_id}/limits", "put"), ("/admin/v1/webhooks", "post")):
        assert "application/json" in paths[path][method]["requestBody"]["content"], path
        assert "413" in paths[path][method]["responses"], path  # a body over 16 KB


def test_queue_positions_are_capped(idle: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from ref2video.store import tasks

    monkeypatch.setattr(tasks, "MAX_QUEUE_POSITION", 2)
    ids = [idle.create() for _ in range(4)]
    assert [idle.get(i)["output"]["queue_position"] for i in ids] == [0, 1, 2, 2]
