"""The official `dashscope` SDK, unchanged: everything works with limits off (the default), and
with them on it reads our 429 as the provider's throttling error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http import HTTPStatus

import dashscope
import pytest
from dashscope import VideoSynthesis

from tests.live import LiveServer, ref_url


@pytest.fixture
def point_sdk() -> Iterator[Callable[[LiveServer], None]]:
    saved = dashscope.base_http_api_url

    def point(server: LiveServer) -> None:
        dashscope.base_http_api_url = f"{server.url}/api/v1"

    yield point
    dashscope.base_http_api_url = saved


def _create(server: LiveServer):  # type: ignore[no-untyped-def]
    return VideoSynthesis.async_call(model="wan2.6-r2v-flash", prompt="character1 waves steps=2 step_ms=10",
                                     reference_urls=[ref_url("a.png")], size="1280*720", duration=5,
                                     api_key=server.key)


def test_the_sdk_works_unchanged_with_limits_off(make_server: Callable[..., LiveServer],
                                                 point_sdk: Callable[[LiveServer], None]) -> None:
    server = make_server()
    point_sdk(server)
    created = [_create(server) for _ in range(5)]
    assert all(c.status_code == HTTPStatus.OK and c.output.task_status == "PENDING" for c in created), created
    for c in created:
        assert VideoSynthesis.fetch(c, api_key=server.key).status_code == HTTPStatus.OK
        done = VideoSynthesis.wait(c, api_key=server.key)
        assert done.status_code == HTTPStatus.OK and done.output.task_status == "SUCCEEDED", done


def test_the_sdk_reads_a_refusal_as_the_providers_throttling(limited: Callable[..., LiveServer],
                                                            point_sdk: Callable[[LiveServer], None]) -> None:
    server = limited(rate_create_per_second=1, rate_create_burst=1, rate_query_per_second=1, rate_query_burst=1)
    point_sdk(server)
    first = _create(server)
    assert first.status_code == HTTPStatus.OK
    refused = _create(server)
    assert refused.status_code == 429 and refused.code == "Throttling.RateQuota", refused
    assert refused.message.startswith("Requests rate limit exceeded")
    assert VideoSynthesis.fetch(first, api_key=server.key).status_code == HTTPStatus.OK
    throttled = VideoSynthesis.fetch(first, api_key=server.key)
    assert throttled.status_code == 429 and throttled.code == "Throttling.RateQuota", throttled
