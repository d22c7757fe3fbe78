"""Webhooks end to end over real HTTP, on both databases: every event of every task reaches
every matching endpoint and the task's own callback, signed (verified with `standardwebhooks`),
once per webhook-id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ref2video.app import webhooks
from ref2video.app.outbox import message_id

from tests.live import LiveServer, make_body

from .conftest import FAST, all_delivered, outbox
from .receiver import Receiver

Make = Callable[..., LiveServer]


def _endpoint(server: LiveServer, rx: Receiver, path: str, events: list[str] | None = None,
              owner: str = "default") -> str:
    endpoint, secret = webhooks.add(server.service.db, owner, rx.url(path), events)
    rx.url(path, secret)
    return endpoint.id


def test_every_event_reaches_each_endpoint_and_the_callback_once(make_server: Make, receiver: Receiver) -> None:
    server = make_server(**FAST)
    db = server.service.db
    everything = _endpoint(server, receiver, "/all")
    failed_only = _endpoint(server, receiver, "/failed", ["task.failed"])
    callback = receiver.url("/cb", webhooks.secret(db, "default"))

    client = server.client()
    r = client.post("/task/bailian/ref2video", json=make_body(prompt="steps=2"),
                    headers={"X-Ref2video-Callback": callback})
    assert r.status_code == 200, r.text
    ok = r.json()["output"]["task_id"]
    r = client.post("/api/v1/services/aigc/video-generation/video-synthesis", json=make_body(prompt="fail=Boom"),
                    headers={"X-DashScope-Async": "enable", "X-Ref2video-Callback": callback})
    assert r.status_code == 200, r.text
    bad = r.json()["output"]["task_id"]
    assert server.wait(ok)["output"]["task_status"] == "SUCCEEDED"
    assert server.wait(bad)["output"]["task_status"] == "FAILED"

    # 2 events x 2 tasks to /all and to /cb, and the one failure to /failed.
    receiver.wait_for(all_delivered(db, 9), "every message delivered")
    receiver.assert_all_verified()
    expected = {("/all", everything), ("/cb", None)}
    for path, endpoint_id in expected:
        got = {(r.task_id, r.event): r for r in receiver.answered_ok(path)}
        assert set(got) == {(ok, "task.running"), (ok, "task.succeeded"), (bad, "task.running"),
                            (bad, "task.failed")}, receiver.summary()
        for (task_id, event), received in got.items():
            assert received.id == message_id(task_id, event, endpoint_id)
        receiver.assert_one_delivery_per_id(path)
    assert [(r.task_id, r.event) for r in receiver.at("/failed")] == [(bad, "task.failed")]
    assert receiver.at("/failed")[0].id == message_id(bad, "task.failed", failed_only)

    succeeded = {r.event: r.payload for r in receiver.at("/all") if r.task_id == ok}["task.succeeded"]
    data = succeeded["data"]
    assert data["task_status"] == "SUCCEEDED" and data["model"] == "wan2.6-r2v-flash"
    assert data["usage"]["output_video_duration"] == 5 and "video_url" not in data
    assert data["submitted_at"].endswith("Z") and data["ended_at"] and data["orig_prompt"] == "steps=2"
    failed = {r.event: r.payload for r in receiver.at("/cb") if r.task_id == bad}["task.failed"]["data"]
    assert (failed["task_status"], failed["code"]) == ("FAILED", "Boom")
