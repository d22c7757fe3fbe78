"""Retries: 429 (honouring Retry-After) and 503 and unreachable servers are retried; nothing else is,
and a POST is never sent twice once the server may have taken it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ref2video.client import Client, InvalidRequest, NotFound, RateLimited, ServerError, TransportError
from tests.client.conftest import QUICK
from tests.client.flaky import FlakyServer
from tests.live import LiveServer, free_port, ref_url


class CountingTransport(httpx.HTTPTransport):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


@pytest.fixture
def proxy(server: LiveServer, flaky: FlakyServer) -> FlakyServer:
    flaky.upstream = server.url
    return flaky


def test_429_with_retry_after_then_503_then_success(server: LiveServer, proxy: FlakyServer,
                                                     sleeps: list[float]) -> None:
    task_id = server.create()
    proxy.then(429, retry_after="1").then(503)
    with Client(proxy.url, server.key, backoff=0.05) as client:
        task = client.get(task_id)
    assert task.id == task_id and task.status != "UNKNOWN"
    assert proxy.count("GET") == 3
    # The server's Retry-After, then the second try's backoff (0.05 * 2, jittered into [50%, 100%]).
    assert len(sleeps) == 2 and sleeps[0] == 1.0 and 0.05 <= sleeps[1] <= 0.1, sleeps


def test_create_is_retried_on_429_and_503_and_made_once(server: LiveServer, proxy: FlakyServer) -> None:
    proxy.then(429, retry_after="0").then(503)
    with Client(proxy.url, server.key, backoff=0.05) as client:
        task = client.create(QUICK, [ref_url("a.png")])
    assert proxy.count("POST") == 3
    with Client(server.url, server.key) as direct:
        assert [t.id for t in direct.list()] == [task.id]


@pytest.mark.parametrize(("status", "error"), [(400, InvalidRequest), (404, NotFound), (500, ServerError)])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_other_errors_are_not_retried(flaky: FlakyServer, status: int, error: type[Exception], method: str) -> None:
    flaky.then(status).then(status)
    with Client(flaky.url, "key", backoff=0.01) as client, pytest.raises(error) as info:
        client.get("t1") if method == "GET" else client.cancel("t1")
    assert flaky.count() == 1
    assert info.value.status_code == status and info.value.request_id == "flaky-1"  # type: ignore[attr-defined]


def test_still_rate_limited_after_the_retries(flaky: FlakyServer) -> None:
    flaky.then(429, retry_after="0", times=5)
    with Client(flaky.url, "key", max_retries=2, backoff=0.01) as client, pytest.raises(RateLimited) as info:
        client.list()
    assert flaky.count() == 3
    assert info.value.retry_after == 0.0 and info.value.code == "Throttling.RateQuota"
    assert str(info.value) == "Throttling.RateQuota: scripted 429 (request flaky-3)"


def test_a_503_without_retry_after_backs_off_exponentially(flaky: FlakyServer, sleeps: list[float]) -> None:
    flaky.then(503, times=3)
    with Client(flaky.url, "key", max_retries=2, backoff=0.2) as client, pytest.raises(ServerError):
        client.get("t1")
    # backoff * 2**n jittered into [50%, 100%]: 0.1-0.2 s, then 0.2-0.4 s.
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4, sleeps
    assert flaky.count() == 3


def test_a_dropped_connection_retries_a_get_but_never_a_post(server: LiveServer, proxy: FlakyServer) -> None:
    task_id = server.create()
    with Client(proxy.url, server.key, backoff=0.01) as client:
        proxy.then(drop=True)
        assert client.get(task_id).id == task_id
        assert proxy.count("GET") == 2

        proxy.then(drop=True)
        with pytest.raises(TransportError) as info:
            client.create(QUICK, [ref_url("a.png")])
        assert proxy.count("POST") == 1
        assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
        assert "POST" in str(info.value) and "RemoteProtocolError" in str(info.value)


def test_a_closed_port_is_a_transport_error_after_the_retries() -> None:
    transport = CountingTransport()
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "key", max_retries=3, backoff=0.01, transport=transport) as client:
        with pytest.raises(TransportError) as info:
            client.get("t1")
        assert len(transport.requests) == 4
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert str(info.value).startswith(f"GET {url}/api/v1/tasks/t1 failed after 4 attempts: ConnectError")

        transport.requests.clear()
        with pytest.raises(TransportError):  # nothing reached the server, so a POST is retried too
            client.create(QUICK, ["https://example.com/a.png"])
        assert len(transport.requests) == 4


def test_backoff_is_capped() -> None:
    with Client("http://127.0.0.1:1", "key", backoff=3.0) as client:
        delays = [client._backoff(n) for n in range(8)]
    assert 1.5 <= delays[0] <= 3.0 and all(d <= 10.0 for d in delays) and delays[-1] >= 5.0
