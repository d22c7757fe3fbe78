"""Typed errors: the provider's envelope as APIError subclasses, and the client's own ClientErrors."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from ref2video.client import (
    APIError,
    AuthenticationError,
    Client,
    ClientError,
    InvalidRequest,
    NotFound,
    ServerError,
    Task,
    TaskFailed,
    WaitTimeout,
)
from tests.client.conftest import QUICK
from tests.client.flaky import FlakyServer
from tests.live import LiveServer, ref_url


def assert_envelope(error: APIError, status: int, code: str) -> None:
    assert error.status_code == status and error.code == code and error.message
    assert error.request_id is not None and uuid.UUID(error.request_id)
    assert isinstance(error.response, httpx.Response) and error.response.status_code == status
    assert error.response.json()["request_id"] == error.request_id
    assert str(error) == f"{code}: {error.message} (request {error.request_id})"


def test_an_unknown_key_is_an_authentication_error(server: LiveServer) -> None:
    with Client(server.url, "r2v-000000000000-nope") as client, pytest.raises(AuthenticationError) as info:
        client.get("some-task")
    assert_envelope(info.value, 401, "InvalidApiKey")
    assert info.value.message == "Invalid API-key provided."


def test_a_broken_rule_is_an_invalid_request_naming_the_field(client: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.create(QUICK, [ref_url("a.png")], size="7*7")
    assert_envelope(info.value, 400, "InvalidParameter")
    assert "size" in info.value.message and "7*7" in str(info.value)
    with pytest.raises(InvalidRequest) as info:
        client.create(QUICK, ["oss://nobody/uploaded/this.png"])
    assert_envelope(info.value, 400, "InvalidURL")


def test_an_unserved_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.create(QUICK, [ref_url("a.png")], model="wan9-imaginary")
    assert_envelope(info.value, 404, "ModelNotFound")


def test_an_error_without_the_envelope_still_has_a_clear_line(flaky: FlakyServer) -> None:
    flaky.then(502, body=b"<html><body>Bad   gateway\n</body></html>")
    with Client(flaky.url, "key", max_retries=0) as client, pytest.raises(ServerError) as info:
        client.get("x")
    error = info.value
    assert error.code == "HTTP 502" and error.request_id is None and error.status_code == 502
    assert str(error) == "HTTP 502: <html><body>Bad gateway </body></html> (HTTP 502)"


def test_configuration_comes_from_arguments_or_the_environment(server: LiveServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REF2VIDEO_SERVER", raising=False)
    monkeypatch.delenv("REF2VIDEO_API_KEY", raising=False)
    with pytest.raises(ClientError, match="REF2VIDEO_SERVER"):
        Client()
    with pytest.raises(ClientError, match="REF2VIDEO_API_KEY"):
        Client(server.url)
    with pytest.raises(ClientError, match="http:// or https://"):
        Client("127.0.0.1:8000", "key")
    monkeypatch.setenv("REF2VIDEO_SERVER", server.url + "/api/v1/")  # a DashScope-style base URL works too
    monkeypatch.setenv("REF2VIDEO_API_KEY", server.key)
    with Client() as client:
        assert client.base_url == server.url
        assert client.get("nothing").status == "UNKNOWN"


def test_bad_references_fail_before_anything_is_sent(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="reference file not found"):
        client.create(QUICK, [tmp_path / "missing.png"])
    with pytest.raises(ClientError, match="unsupported reference 'ftp://"):
        client.create(QUICK, ["ftp://example.com/a.png"])
    with pytest.raises(ClientError, match="non-empty string"):
        client.get("")
    assert client.list().total == 0


def test_failure_errors_say_what_happened() -> None:
    failed = Task(id="t1", status="FAILED", code="InvalidParameter", message="reference 2: image is 120x90 px")
    assert str(TaskFailed(failed)) == "task t1 ended FAILED: InvalidParameter: reference 2: image is 120x90 px"
    assert str(TaskFailed(Task(id="t2", status="CANCELED"))) == "task t2 ended CANCELED"
    running = Task(id="t3", status="RUNNING", progress=40)
    assert str(WaitTimeout(running, 2.5)) == "task t3 is still RUNNING, 40% after 2.5 s"
    for error in (TaskFailed(failed), WaitTimeout(failed, 1)):
        assert isinstance(error, ClientError) and error.task is failed
