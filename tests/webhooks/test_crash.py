"""A sender killed after claiming a message and before recording it: after a restart the
message goes out again under the same webhook-id, and is recorded once delivered. Delivery is
at least once with a stable id, so a receiver that keys on webhook-id sees each event once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ref2video.app import webhooks
from ref2video.store.db import make_engine, migrate, now_ms
from ref2video.store.models import OutboxMessage

from tests.acceptance.procs import env_for, spawn, stop, wait_healthy
from tests.live import free_port, make_body

from .conftest import all_delivered
from .receiver import Receiver

pytestmark = pytest.mark.slow


def test_a_message_in_flight_when_the_sender_dies_is_sent_again_with_its_id(
        tmp_path: Path, database_url: str, receiver: Receiver) -> None:
    db = make_engine(database_url)
    migrate(db)
    _, secret = webhooks.add(db, "default", receiver.url("/hooks"))
    receiver.url("/hooks", secret)
    # The first task.succeeded is held until the sender is dead, then refused (its socket is gone).
    let_go = threading.Event()
    held: list[str] = []

    def answer(got):  # type: ignore[no-untyped-def]
        if got.event == "task.succeeded" and not held:
            held.append(got.id)
            let_go.wait(120)
            return 503
        return 200

    receiver.answer("/hooks", answer)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # An attempt may take 5 s, so a claim is leased for 10 s: the kill comes long before either.
    env = env_for(tmp_path / "data", database_url, port=port, webhook_timeout=5, webhook_poll_interval=0.05,
                  webhook_backoff_seconds=0.05, webhook_backoff_max_seconds=0.2)
    log = tmp_path / "server.log"
    proc = spawn(["serve"], env, log)
    try:
        wait_healthy(url, proc)
        key = (tmp_path / "data" / "first-api-key.txt").read_text().strip()
        r = httpx.post(f"{url}/task/bailian/ref2video", json=make_body(), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        receiver.wait_for(lambda: bool(held), "the task.succeeded delivery to arrive")
        stop(proc, signal.SIGKILL)  # claimed, sent, not recorded
        let_go.set()

        with db.connect() as conn:
            row = conn.execute(select(OutboxMessage).where(OutboxMessage.message_id == held[0])).one()
        assert row.attempts == 1 and row.delivered_at is None and row.last_error is None
        assert row.lease_until is not None and row.lease_until > now_ms()  # leased to the dead sender

        proc = spawn(["serve"], env, log)
        wait_healthy(url, proc)
        receiver.wait_for(all_delivered(db, 2), "both events delivered after the restart")
    finally:
        stop(proc)
        let_go.set()
    receiver.assert_all_verified()
    sent = [(r.event, r.id, r.status) for r in receiver.at("/hooks")]
    running = [s for s in sent if s[0] == "task.running"]
    succeeded = [s for s in sent if s[0] == "task.succeeded"]
    assert len(running) == 1 and running[0][2] == 200, sent
    assert [s[1] for s in succeeded] == [held[0], held[0]], sent  # the same webhook-id, twice
    assert succeeded[-1][2] == 200
    receiver.assert_one_delivery_per_id("/hooks")
    with db.connect() as conn:
        row = conn.execute(select(OutboxMessage).where(OutboxMessage.message_id == held[0])).one()
    assert row.attempts == 2 and row.delivered_at is not None
    db.dispose()
