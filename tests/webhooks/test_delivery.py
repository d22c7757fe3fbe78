"""Webhooks end to end over real HTTP, on both databases: every event of every task reaches
every matching endpoint and the task's own callback, signed (verified with `standardwebhooks`),
once per webhook-id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ref2video.app import webhooks
from ref2video.app.outbox import message_id

from tests.live import LiveServer, make_body

from .conftest import FAST, all_delivered, outbox, wait_until
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


def test_a_cancel_is_announced_by_a_process_that_runs_no_tasks(make_server: Make, receiver: Receiver) -> None:
    """workers=0: nothing claims the task, the owner cancels it, and this API-only process's
    own sender delivers task.canceled (and there was never a task.running)."""
    server = make_server(workers=0, **FAST)
    endpoint_id = _endpoint(server, receiver, "/hooks")
    task_id = server.create()
    assert server.client().post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    receiver.wait_for(all_delivered(server.service.db, 1), "the cancel delivered")
    (got,) = receiver.at("/hooks")
    expected_id = message_id(task_id, "task.canceled", endpoint_id)
    assert (got.event, got.task_id, got.id) == ("task.canceled", task_id, expected_id)
    assert got.payload["data"]["task_status"] == "CANCELED" and got.verified


def test_an_endpoint_that_fails_for_a_while_still_gets_every_event(make_server: Make, receiver: Receiver) -> None:
    server = make_server(**FAST)
    _endpoint(server, receiver, "/flaky")
    failures = iter(range(6))
    receiver.answer("/flaky", lambda _: 500 if next(failures, None) is not None else 200)
    ids = [server.create() for _ in range(2)]
    for task_id in ids:
        server.wait(task_id)
    receiver.wait_for(all_delivered(server.service.db, 4), "every message delivered after the failures")
    receiver.assert_all_verified()
    refused = [r for r in receiver.at("/flaky") if r.status == 500]
    delivered = {r.id: r for r in receiver.answered_ok("/flaky")}
    assert len(refused) == 6 and len(delivered) == 4
    assert {r.id for r in refused} <= set(delivered)  # retried under the same webhook-id
    receiver.assert_one_delivery_per_id("/flaky")
    rows = outbox(server.service.db)
    assert sum(r.attempts for r in rows) == 10 and any(r.last_error == "HTTP 500: nope" for r in rows)


def test_a_message_is_given_up_after_the_retry_window(make_server: Make, receiver: Receiver) -> None:
    server = make_server(webhook_retry_hours=1 / 3600, **FAST)  # one second
    _endpoint(server, receiver, "/down", ["task.succeeded"])
    receiver.answer("/down", lambda _: 503)
    server.wait(server.create())
    rows = wait_until(lambda: [r for r in outbox(server.service.db) if r.given_up_at is not None], "a give-up")
    (row,) = rows
    assert row.delivered_at is None and row.attempts >= 2 and row.last_error.startswith("HTTP 503")
    assert len(receiver.at("/down")) == row.attempts  # one request per attempt, none after


def test_loopback_is_refused_unless_allowed(make_server: Make, receiver: Receiver, tmp_path: Path) -> None:
    """fetch_allow is empty: the loopback endpoint and a callback whose name resolves to
    loopback are never reached; each attempt records why."""
    server = make_server(fetch_allow=[], **FAST)
    _endpoint(server, receiver, "/private")
    r = server.client().post("/task/bailian/ref2video", json=make_body(urls=["https://example.com/a.png"]),
                             headers={"X-Ref2video-Callback": receiver.url("/cb", host="localhost")})
    assert r.status_code == 200, r.text
    db = server.service.db
    wait_until(lambda: (rows := outbox(db)) and all(row.attempts >= 2 for row in rows), "attempts refused")
    rows = outbox(db)
    assert {row.url.split("/")[2].split(":")[0] for row in rows} == {"127.0.0.1", "localhost"}
    for row in rows:
        assert row.delivered_at is None and row.last_error.startswith("refused: ") and "loopback" in row.last_error
        assert "fetch_allow" in row.last_error
    assert receiver.received == []


def test_a_redirect_is_not_followed(make_server: Make, receiver: Receiver) -> None:
    server = make_server(**FAST)
    _endpoint(server, receiver, "/moved", ["task.succeeded"])
    receiver.answer("/moved", lambda _: 307)
    server.wait(server.create())
    wait_until(lambda: [r for r in outbox(server.service.db) if r.attempts >= 2], "two attempts")
    (row,) = outbox(server.service.db)
    assert row.delivered_at is None and row.last_error.startswith("HTTP 307")
    assert receiver.at("/redirected") == []


def test_a_slow_endpoint_does_not_hold_up_tasks(make_server: Make, receiver: Receiver) -> None:
    """One delivery slot, and the endpoint holds every request until the test lets go: the
    tasks all finish while the first delivery is still held."""
    import threading

    server = make_server(webhook_concurrency=1, webhook_timeout=300, **FAST)
    _endpoint(server, receiver, "/slow")
    let_go = threading.Event()
    receiver.answer("/slow", lambda _: 200 if let_go.wait(300) else 500)
    first = server.create()
    receiver.wait_for(lambda: len(receiver.received) == 1, "the first delivery held")
    later = [server.create() for _ in range(3)]
    for task_id in [first, *later]:
        assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    assert len(receiver.received) == 1 and receiver.received[0].status is None  # still held
    let_go.set()
    receiver.wait_for(all_delivered(server.service.db, 8), "everything delivered once let go")
    receiver.assert_one_delivery_per_id("/slow")


def test_the_callback_header_must_be_an_http_url(make_server: Make, receiver: Receiver) -> None:
    server = make_server(workers=0, **FAST)
    client = server.client()
    routes = [("/task/bailian/ref2video", {}),
              ("/api/v1/services/aigc/video-generation/video-synthesis", {"X-DashScope-Async": "enable"})]
    for route, extra in routes:
        for bad in ("ftp://example.com/x", "example.com/hook", "http://", "https://user:pw@example.com/",
                    "http://example.com:99999/", "http://exa mple.com/", "javascript:alert(1)"):
            r = client.post(route, json=make_body(), headers={**extra, "X-Ref2video-Callback": bad})
            assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", (bad, r.text)
            assert "X-Ref2video-Callback" in r.json()["message"]
        r = client.post(route, json=make_body(), headers={**extra, "X-Ref2video-Callback": receiver.url("/ok")})
        assert r.status_code == 200, r.text
    from sqlalchemy import select

    from ref2video.store.models import Task

    with server.service.db.connect() as conn:
        assert conn.execute(select(Task.callback_url)).scalars().all() == [receiver.url("/ok")] * 2


def test_messages_wait_in_the_outbox_for_a_sender(make_server: Make, receiver: Receiver) -> None:
    """A process with no sender runs the task and stops; its messages survive it, and a later
    API-only process on the same database delivers them."""
    runner = make_server(webhook_sender=False, **FAST)
    _endpoint(runner, receiver, "/later")
    task_id = runner.create()
    runner.wait(task_id)
    rows = wait_until(lambda: len(outbox(runner.service.db)) == 2 and outbox(runner.service.db), "two messages")
    assert all(r.attempts == 0 and r.delivered_at is None for r in rows)
    runner.stop()
    assert receiver.received == []
    sender = make_server(workers=0, **FAST)
    receiver.wait_for(all_delivered(sender.service.db, 2), "delivered by the second process")
    assert sorted(r.event for r in receiver.at("/later")) == ["task.running", "task.succeeded"]


def test_two_senders_never_send_one_message_twice(make_server: Make, receiver: Receiver) -> None:
    """Two processes' senders share the outbox: every message is sent once (the receiver
    answers 200 at once, so a second send of an id could only be a race between them)."""
    first = make_server(webhook_sender=False, **FAST)
    _endpoint(first, receiver, "/both")
    ids = [first.create(prompt="steps=1 step_ms=1") for _ in range(8)]
    for task_id in ids:
        first.wait(task_id)
    first.stop()
    make_server(workers=0, **FAST), make_server(workers=0, **FAST)
    receiver.wait_for(all_delivered(first.service.db, 16), "all delivered")
    assert len(receiver.received) == 16 and len({r.id for r in receiver.received}) == 16
