"""How `ProviderClient` maps a misbehaving provider (tests/relay/faults.py) to its two errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ref2video.errors import RetryableEngineError
from ref2video.engines.dashscope import ProviderClient, ProviderError, ProviderTransient, RateLimiter
from tests.live import free_port, make_body
from tests.relay.faults import Fault, FaultServer

T = TypeVar("T")


def run(base: str, work: Callable[[ProviderClient], Coroutine[Any, Any, T]], **options: Any) -> T:
    async def main() -> T:
        options.setdefault("timeout", 5)
        async with ProviderClient(f"{base}/api/v1", ["sk-test"], **options) as client:
            return await work(client)
    return asyncio.run(main())


def transient(base: str, call: str, **options: Any) -> ProviderTransient:
    """The ProviderTransient that one `submit` or `get` raises."""
    async def work(client: ProviderClient) -> object:
        if call == "submit":
            return await client.submit(make_body(), oss=False)
        return await client.get("t-1")

    with pytest.raises(ProviderTransient) as caught:
        run(base, work, **options)
    assert isinstance(caught.value, RetryableEngineError)
    return caught.value


def test_429_is_transient_with_retry_after(faults: FaultServer) -> None:
    faults.then(Fault(429, body=None, headers={"Retry-After": "3"}))
    error = transient(faults.url, "submit")
    assert (error.code, error.status, error.retry_after, error.delay) == ("Throttling.RateQuota", 429, 3.0, 3.0)
    assert error.message == "submit: scripted 429"
    assert not error.uncertain  # throttled before anything was created: safe to submit again


@pytest.mark.parametrize("call, uncertain", [("submit", True), ("get", False)])
def test_500_is_transient(faults: FaultServer, call: str, uncertain: bool) -> None:
    faults.then(Fault(500, body=None))
    error = transient(faults.url, call)
    assert (error.code, error.status, error.retry_after, error.uncertain) == ("InternalError", 500, None, uncertain)


def test_a_gateway_page_without_an_envelope(faults: FaultServer) -> None:
    faults.then(Fault(503, body=b"<html>upstream overloaded</html>", content_type="text/html",
                      headers={"Retry-After": "7"}))
    error = transient(faults.url, "get")
    assert (error.code, error.status, error.retry_after) == ("ServiceUnavailable", 503, 7.0)
    assert "upstream overloaded" in error.message


@pytest.mark.parametrize("body", [b'{"output": {"task_id": ', b"<html>OK</html>", b"[1, 2]",
                                  b'{"output": {"task_status": "PENDING"}}'])
def test_a_broken_answer_to_a_submit_is_transient_and_uncertain(faults: FaultServer, body: bytes) -> None:
    faults.then(Fault(200, body=body))
    error = transient(faults.url, "submit")
    assert error.code == "BadResponse" and error.status in (200, None) and error.uncertain
    assert error.message.startswith("submit: ")


def test_a_dropped_connection(faults: FaultServer) -> None:
    faults.then(Fault(drop=True), Fault(drop=True))
    assert transient(faults.url, "submit").uncertain  # it may have been created before the drop
    error = transient(faults.url, "get")
    assert (error.code, error.uncertain, error.status) == ("ConnectionError", False, None)


def test_an_answer_cut_short(faults: FaultServer) -> None:
    faults.then(Fault(cut=True))
    error = transient(faults.url, "get")
    assert error.code == "ConnectionError" and "RemoteProtocolError" in error.message


def test_a_slow_answer_times_out(faults: FaultServer) -> None:
    # Held for a minute, past ProviderClient's default timeout (30 s): only the 0.3 s one ends it.
    faults.then(Fault(hold=60.0), Fault(hold=60.0))
    error = transient(faults.url, "submit", timeout=0.3)
    assert (error.code, error.uncertain) == ("RequestTimeOut", True)
    assert error.message == "submit: no complete answer in time (limit 0.3 s)"
    assert transient(faults.url, "get", timeout=0.3).code == "RequestTimeOut"


def test_nobody_listening_is_certain_not_to_have_acted() -> None:
    error = transient(f"http://127.0.0.1:{free_port()}", "submit")
    assert (error.code, error.uncertain) == ("ConnectionError", False)


def test_a_4xx_without_an_envelope_is_permanent(faults: FaultServer) -> None:
    faults.then(Fault(404, body=b"<html>no such path</html>", content_type="text/html"))

    async def work(client: ProviderClient) -> object:
        return await client.get("t-1")

    with pytest.raises(ProviderError) as caught:
        run(faults.url, work)
    assert (caught.value.code, caught.value.status) == ("NotFound", 404)
    assert not isinstance(caught.value, RetryableEngineError)


def certificate(upload_host: str, envelope: str = "data") -> bytes:
    """A getPolicy answer as the provider documents it: the certificate under `data`, with
    integer sizes and the forbid-overwrite flag as a string."""
    cert = {"policy": "eyJl1ZSJ=", "signature": "eWy=", "upload_dir": "dashscope-instant/abc/2026-12-01/xyz",
            "upload_host": upload_host, "expire_in_seconds": 300, "max_file_size_mb": 100,
            "capacity_limit_mb": 999999999, "oss_access_key_id": "LTAI5t", "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true"}
    return json.dumps({"request_id": "52f4383a-c67d-9f8c", envelope: cert}).encode()


@pytest.mark.parametrize("envelope", ["data", "output"])  # the provider's shape, and a gateway's
def test_the_upload_reads_the_providers_certificate(faults: FaultServer, tmp_path: Path, envelope: str) -> None:
    faults.then(Fault(body=certificate(f"{faults.url}/oss", envelope)), Fault(body=b""))
    (tmp_path / "hero.png").write_bytes(b"png")

    async def work(client: ProviderClient) -> str:
        return await client.upload(tmp_path / "hero.png", "wan2.6-r2v")

    assert run(faults.url, work) == "oss://dashscope-instant/abc/2026-12-01/xyz/hero.png"
    upload = faults.hits[1]
    assert upload.method == "POST" and upload.path == "/oss" and "authorization" not in upload.headers


def test_an_oss_style_xml_error_from_the_upload_host(faults: FaultServer, tmp_path: Path) -> None:
    xml = b"<?xml version='1.0'?><Error><Code>FileAlreadyExists</Code><Message>exists</Message></Error>"
    faults.then(Fault(body=certificate(f"{faults.url}/oss")),
                Fault(409, body=xml, content_type="application/xml"))
    (tmp_path / "a.png").write_bytes(b"png")

    async def work(client: ProviderClient) -> str:
        return await client.upload(tmp_path / "a.png", "wan2.6-r2v")

    with pytest.raises(ProviderError) as caught:
        run(faults.url, work)
    failure = caught.value
    assert (failure.code, failure.message, failure.status) == ("FileAlreadyExists", "upload: exists", 409)
    get_policy, upload = faults.hits
    assert get_policy.path == "/api/v1/uploads?action=getPolicy&model=wan2.6-r2v"
    assert get_policy.headers["authorization"] == "Bearer sk-test"
    assert upload.path == "/oss" and "authorization" not in upload.headers


def test_a_certificate_without_its_fields_is_transient(faults: FaultServer, tmp_path: Path) -> None:
    faults.then(Fault(body=b'{"output": {"policy": "p"}}'))
    (tmp_path / "a.png").write_bytes(b"png")

    async def work(client: ProviderClient) -> str:
        return await client.upload(tmp_path / "a.png", "wan2.6-r2v")

    with pytest.raises(ProviderTransient) as caught:
        run(faults.url, work)
    assert caught.value.code == "BadResponse" and "upload_host" in caught.value.message


@pytest.mark.parametrize("fault, code", [(Fault(503, body=b"busy"), "ServiceUnavailable"),
                                         (Fault(cut=True, body=b"x" * 5000), "ConnectionError"),
                                         (Fault(body=b""), "BadResponse")])
def test_download_failures_in_passing(faults: FaultServer, tmp_path: Path, fault: Fault, code: str) -> None:
    faults.then(fault)

    async def work(client: ProviderClient) -> int:
        return await client.download(f"{faults.url}/video.mp4", tmp_path / "v.mp4", max_bytes=1 << 20)

    with pytest.raises(ProviderTransient) as caught:
        run(faults.url, work)
    assert caught.value.code == code
    assert list(tmp_path.iterdir()) == []


def test_download_bounds_a_body_of_undeclared_length(tmp_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 6.5 MB, sent chunked: no Content-Length to refuse up front
            yield b"\0" * 65536

    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())

    async def work(client: ProviderClient) -> int:
        return await client.download("http://provider.test/v.mp4", tmp_path / "v.mp4", max_bytes=200_000)

    with pytest.raises(ProviderError) as caught:
        run("http://provider.test", work, transport=httpx.MockTransport(endless))
    assert caught.value.code == "ResultTooLarge"
    assert list(tmp_path.iterdir()) == []


def test_each_key_waits_for_its_own_limiter(faults: FaultServer) -> None:
    limiters = [RateLimiter(20), RateLimiter(1000)]

    async def work(client: ProviderClient) -> None:
        for _ in range(11):
            await client.get("t-1", key_index=0)
        for _ in range(11):
            await client.get("t-1", key_index=1)

    async def main() -> None:
        async with ProviderClient(f"{faults.url}/api/v1", ["sk-a", "sk-b"], timeout=5, limiters=limiters) as client:
            await work(client)

    asyncio.run(main())
    slow = [h.at for h in faults.hits if h.headers["authorization"] == "Bearer sk-a"]
    fast = [h.at for h in faults.hits if h.headers["authorization"] == "Bearer sk-b"]
    assert slow[-1] - slow[0] >= 0.45  # ten gaps of 1/20 s (less the server's clock jitter)
    assert fast[-1] - fast[0] < 0.45


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="base URL"):
        ProviderClient("dashscope.aliyuncs.com", ["k"])
    with pytest.raises(ValueError, match="api_keys"):
        ProviderClient("https://x/api/v1", [])
    with pytest.raises(ValueError, match="api_keys"):
        ProviderClient("https://x/api/v1", ["k", " "])
    with pytest.raises(ValueError, match="one limiter per key"):
        ProviderClient("https://x/api/v1", ["k"], limiters=[])

    async def bad_index() -> None:
        async with ProviderClient("https://x/api/v1", ["k"]) as client:
            await client.get("t", key_index=1)

    with pytest.raises(ValueError, match="key_index"):
        asyncio.run(bad_index())
