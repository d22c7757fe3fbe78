"""The `dashscope` engine end to end: a relay server in front of a provider server, both real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest
from pydantic import ValidationError

from ref2video.engines.dashscope import DashscopeEngine
from ref2video.config import Settings
from tests import conftest
from tests.live import LiveServer, make_body, media_body, ref_url
from tests.relay.proxy import FaultProxy, Rule
from tests.relay.relays import QUICK, RELAYED, provider_tasks, row, start_provider, start_relay, wait_for

database_url = conftest.database_url  # the relay's own database: SQLite and PostgreSQL again




@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_provider(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def relay(tmp_path: Path, database_url: str, provider: LiveServer) -> Iterator[LiveServer]:
    server = start_relay(tmp_path, database_url, provider.url, [provider.key])
    yield server
    server.stop()


def test_a_relayed_task_succeeds_with_our_own_link_and_the_providers_usage(
        relay: LiveServer, provider: LiveServer, tmp_path: Path) -> None:
    task_id = relay.create(make_body(QUICK, duration=4))
    done = relay.wait(task_id, timeout=30)
    out = done["output"]
    assert out["task_status"] == "SUCCEEDED" and out["engine"] == "dashscope"
    assert out["orig_prompt"] == QUICK
    # Our link, on our server, signed by us: the provider's link dies after 24 h.
    assert out["video_url"].startswith(relay.results_url)
    video = tmp_path / "video.mp4"
    video.write_bytes(httpx.get(out["video_url"]).content)
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    # The file and the usage are the provider's, copied.
    (upstream,) = provider_tasks(provider)
    assert row(relay, task_id).upstream_id == upstream.id
    theirs = provider.get(upstream.id)
    assert video.read_bytes() == httpx.get(theirs["output"]["video_url"]).content
    assert done["usage"] == theirs["usage"]
    assert done["usage"]["output_video_duration"] == 4


def test_the_providers_failure_reaches_the_owner_with_its_code(relay: LiveServer) -> None:
    task_id = relay.create(make_body("character1 trips fail=DataInspectionFailed"))
    out = relay.wait(task_id, timeout=30)["output"]
    assert out["task_status"] == "FAILED"
    assert out["code"] == "DataInspectionFailed" and out["message"]


def test_own_uploads_go_to_the_providers_storage_first(relay: LiveServer, provider: LiveServer) -> None:
    image = httpx.get(ref_url("b.jpg")).content
    r = relay.client().post("/api/v1/uploads", files={"file": ("hero.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    ours = r.json()["output"]["url"]
    # refs=image: the provider's engine fails unless it fetched an image from the oss:// key.
    task_id = relay.create(make_body(f"{QUICK} refs=image,image", urls=[ours, ref_url("a.png")]))
    assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"
    (upstream,) = provider_tasks(provider)
    sent = upstream.spec["reference_urls"]
    assert sent[0].startswith("oss://") and sent[0].endswith("/hero.jpg") and sent[0] != ours
    assert sent[1] == ref_url("a.png")  # a public URL goes as it is


def test_an_upload_of_someone_else_is_refused(relay: LiveServer, provider: LiveServer) -> None:
    r = relay.client().post("/api/v1/uploads", files={"file": ("hero.png", httpx.get(ref_url("a.png")).content)})
    other = relay.new_key(owner="someone-else")
    refused = relay.client(other).post("/task/bailian/ref2video",
                                       json=make_body(QUICK, urls=[r.json()["output"]["url"]]))
    assert refused.status_code == 400 and refused.json()["code"] == "InvalidURL"
    assert provider_tasks(provider) == []  # nothing was sent


def test_a_cancel_while_the_provider_holds_it_pending_is_passed_upstream(
        tmp_path: Path, database_url: str) -> None:
    provider = start_provider(tmp_path, workers=0)  # the provider never starts anything
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        task_id = relay.create(make_body(QUICK))
        wait_for(lambda: row(relay, task_id).upstream_id, what="the submit")
        wait_for(lambda: relay.get(task_id)["output"]["task_status"] == "PENDING", what="PENDING upstream")
        assert relay.client().post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        assert_canceled_at_the_provider(relay, provider, task_id)
    finally:
        relay.stop()
        provider.stop()


def assert_canceled_at_the_provider(relay: LiveServer, provider: LiveServer, task_id: str) -> None:
    assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "CANCELED"
    (upstream,) = provider_tasks(provider)
    assert upstream.status == "CANCELED"


def test_a_task_running_upstream_cannot_be_canceled(relay: LiveServer) -> None:
    task_id = relay.create(make_body("character1 waves steps=40 step_ms=100"))
    wait_for(lambda: relay.get(task_id)["output"]["task_status"] == "RUNNING"
             and row(relay, task_id).upstream_id is not None, what="RUNNING upstream")
    wait_for(lambda: row(relay, task_id).upstream_status == "RUNNING", what="the relay to see it run")
    r = relay.client().post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 400 and r.json()["code"] == "UnsupportedOperation"
    assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"


def test_a_restarted_relay_adopts_the_tasks_in_flight_without_submitting_again(
        tmp_path: Path, database_url: str, provider: LiveServer) -> None:
    first = start_relay(tmp_path, database_url, provider.url, [provider.key])
    ids = [first.create(make_body("character1 waves steps=30 step_ms=100")) for _ in range(3)]
    wait_for(lambda: all(row(first, i).upstream_id for i in ids), what="three submits")
    first.stop()  # graceful: the tasks go back to the queue with their upstream ids
    second = start_relay(tmp_path, database_url, provider.url, [provider.key], name="relay2")
    try:
        for task_id in ids:
            assert second.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"
        assert len(provider_tasks(provider)) == 3
    finally:
        second.stop()


def test_a_relay_given_some_models_relays_only_those(tmp_path: Path, database_url: str,
                                                    provider: LiveServer) -> None:
    """`worker_models` narrows the relay as it narrows worker threads (`ref2video worker
    --models`): the other relayed models' tasks are left to the processes that serve them.
    Before, the relay claimed every model mapped to `dashscope`."""
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key], worker_models=["wan2.6-r2v"])
    try:
        other = relay.create(make_body(QUICK))  # wan2.6-r2v-flash, older, so first in line
        mine = relay.create(make_body(QUICK, model="wan2.6-r2v"))
        assert relay.wait(mine, timeout=30)["output"]["task_status"] == "SUCCEEDED"
        assert relay.get(other)["output"]["task_status"] == "PENDING"
        assert len(provider_tasks(provider)) == 1
        assert [dict(engine.models) for engine in relay.service.held.engines] == [{"wan2.6-r2v": "wan2.6-r2v"}]
    finally:
        relay.stop()


def test_relayed_models_need_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dashscope_api_keys"):
        Settings(data_dir=tmp_path, models={"wan2.6-r2v": "dashscope"})
    relayed = Settings(data_dir=tmp_path, models={"wan2.6-r2v": "dashscope", "mine": "preview"},
                       dashscope_api_keys=["sk-1"], dashscope_models={"wan2.6-r2v": "wan2.6-r2v-flash"})
    assert relayed.relay_models == {"wan2.6-r2v": "wan2.6-r2v-flash"}


def test_the_official_sdk_with_a_local_file_through_the_relay(relay: LiveServer, provider: LiveServer,
                                                              tmp_path: Path) -> None:
    """Two hops of the provider's upload flow: the SDK uploads to us, we upload to the provider."""
    import dashscope
    from dashscope import VideoSynthesis

    hero = tmp_path / "hero.jpg"
    hero.write_bytes(httpx.get(ref_url("b.jpg")).content)
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{relay.url}/api/v1"
    try:
        created = VideoSynthesis.async_call(
            model="wan2.6-r2v-flash", prompt=f"{QUICK} refs=image", reference_urls=[f"file://{hero}"],
            size="1280*720", duration=5, api_key=relay.key)
        assert created.status_code == 200, created
        done = VideoSynthesis.wait(created, api_key=relay.key)
    finally:
        dashscope.base_http_api_url = saved
    assert done.output.task_status == "SUCCEEDED", done
    assert done.output.video_url.startswith(relay.results_url)
    (upstream,) = provider_tasks(provider)
    assert upstream.spec["reference_urls"][0].startswith("oss://")


def test_a_cancel_while_no_relay_runs_is_kept_and_passed_on(tmp_path: Path, database_url: str) -> None:
    """Accepted cancels are not lost: a task handed back to the queue with its upstream id is
    canceled at the provider by the next relay to claim it."""
    provider = start_provider(tmp_path, workers=0)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    task_id = relay.create(make_body(QUICK))
    wait_for(lambda: row(relay, task_id).upstream_id, what="the submit")
    relay.stop()  # the task goes back to PENDING, with its upstream id
    api = start_relay(tmp_path, database_url, provider.url, [provider.key], name="api", workers=0)
    try:
        assert api.get(task_id)["output"]["task_status"] == "PENDING"
        assert api.client().post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        assert api.get(task_id)["output"]["task_status"] == "PENDING"  # not ours to end yet
    finally:
        api.stop()
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key], name="relay2")
    try:
        assert_canceled_at_the_provider(relay, provider, task_id)
    finally:
        relay.stop()
        provider.stop()


def test_a_task_the_relay_forgot_goes_back_to_the_queue_and_ends(relay: LiveServer, provider: LiveServer) -> None:
    """The relay renews its leases by its token, so a task held in the table but not watched
    in memory would keep its lease for ever: the keeper hands such a task back, and it is
    picked up again by its upstream id (never submitted twice)."""
    task_id = relay.create(make_body("character1 waves steps=20 step_ms=100"))
    wait_for(lambda: row(relay, task_id).upstream_id, what="the submit")
    runner = relay.service.held.engines[0]
    assert isinstance(runner, DashscopeEngine) and runner._loop is not None

    def forget() -> None:  # as a bug would: the table still says the task is ours
        runner._held.discard(task_id)
        for poller in runner.pollers:
            poller.remove(task_id)

    runner._loop.call_soon_threadsafe(forget)
    assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"
    assert len(provider_tasks(provider)) == 1


def test_the_provider_receives_the_checked_request_in_its_models_form(tmp_path: Path, database_url: str) -> None:
    """What goes upstream is rebuilt from the checked request (docs/protocol.md §9): the
    provider's model name, the provider's defaults filled in, the seed chosen here, the prompt
    cut, unknown keys left out. An operator's alias of wan2.7-r2v takes the media form."""
    provider = start_provider(tmp_path)
    proxy = FaultProxy(provider.url)
    relay = start_relay(tmp_path, database_url, proxy.url, [provider.key],
                        models={**RELAYED, "studio": "dashscope"}, dashscope_models={"studio": "wan2.7-r2v"})
    try:
        r = relay.client().post("/task/bailian/ref2video", json=make_body(model="studio"))
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", r.text
        assert "studio (relayed as wan2.7-r2v) takes input.media" in r.json()["message"]
        prompt = "Image 1 waves steps=3 step_ms=50 " + "x" * 5000
        body = {"model": "studio",
                "input": {"prompt": prompt, "extend_prompt": True,
                          "media": [{"type": "reference_image", "url": ref_url("a.png"), "note": "mine"}]},
                "parameters": {"duration": 2, "future_option": 1}}
        task_id = relay.create(body)
        done = relay.wait(task_id, timeout=30)
        assert done["output"]["task_status"] == "SUCCEEDED", done
        (sent,) = [json.loads(hit.body) for hit in proxy.hits
                   if hit.method == "POST" and hit.path.endswith("/video-synthesis")]
        assert sent == {
            "model": "wan2.7-r2v",
            "input": {"prompt": prompt[:5000], "media": [{"type": "reference_image", "url": ref_url("a.png")}]},
            "parameters": {"resolution": "1080P", "ratio": "16:9", "prompt_extend": True, "duration": 2,
                           "watermark": False, "seed": done["output"]["seed"]},
        }
    finally:
        relay.stop()
        proxy.close()
        provider.stop()


def test_a_cancel_the_provider_refuses_still_ends_canceled(tmp_path: Path, database_url: str) -> None:
    """The provider started the task just before our cancel reached it, and refuses it, as it
    refuses every cancel of a running task. The owner was answered 200, so the task ends
    CANCELED here all the same, with no result kept and no usage."""
    provider = start_provider(tmp_path)
    proxy = FaultProxy(provider.url)
    # Queries fail for now, so the relay still believes the provider holds the task PENDING.
    blind = proxy.add(Rule("status", "GET", r"/api/v1/tasks/[^/?]+$", times=-1, status=503))
    refuse = proxy.add(Rule("status", "POST", r"/cancel$", status=400))
    relay = start_relay(tmp_path, database_url, proxy.url, [provider.key])
    try:
        task_id = relay.create(make_body("character1 waves steps=20 step_ms=100"))
        wait_for(lambda: row(relay, task_id).upstream_id, what="the submit")
        assert relay.get(task_id)["output"]["task_status"] == "PENDING"
        assert relay.client().post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        wait_for(lambda: refuse.used == 1, what="the provider's refusal")
        proxy.rules.remove(blind)  # the provider's SUCCEEDED can now reach the relay
        body = relay.wait(task_id, timeout=30)
        assert body["output"]["task_status"] == "CANCELED" and "usage" not in body
        (upstream,) = provider_tasks(provider)
        assert upstream.status in ("RUNNING", "SUCCEEDED")  # it ran on upstream, as it does
        assert not list(relay.service.storage.listing())
    finally:
        relay.stop()
        proxy.close()
        provider.stop()


def test_the_media_form_is_passed_on_as_sent(relay: LiveServer, provider: LiveServer) -> None:
    """wan2.7-r2v through the relay: the provider gets input.media (our upload sent on to its
    storage first, with its voice) and the resolution and ratio, and its usage comes back."""
    image = httpx.get(ref_url("b.jpg")).content
    uploaded = relay.client().post("/api/v1/uploads", files={"file": ("hero.jpg", image, "image/jpeg")})
    ours = uploaded.json()["output"]["url"]
    body = media_body("Image 1 waves at Video 1 steps=3 step_ms=50 refs=image,video",
                      [{"type": "reference_image", "url": ours, "reference_voice": ref_url("voice.wav")},
                       {"type": "reference_video", "url": ref_url("c.mp4")}], resolution="720P", ratio="3:4")
    task_id = relay.create(body)
    done = relay.wait(task_id, timeout=30)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    (upstream,) = provider_tasks(provider)
    sent = upstream.spec
    assert sent["form"] == "media" and (sent["resolution"], sent["ratio"]) == ("720P", "3:4")
    first, second = sent["media"]
    assert first["type"] == "reference_image" and first["url"].startswith("oss://") and first["url"] != ours
    assert first["reference_voice"] == ref_url("voice.wav")
    assert second == {"type": "reference_video", "url": ref_url("c.mp4"), "reference_voice": None}
    assert done["usage"] == provider.get(upstream.id)["usage"] and done["usage"]["ratio"] == "3:4"
