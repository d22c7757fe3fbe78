"""Billing over real HTTP, on SQLite and PostgreSQL: holds at create, exact charges at the end,
nothing charged for what failed, was canceled or expired, and books that always add up."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from ref2video.app import accounts
from ref2video.app.ledger import to_micro
from ref2video.store.models import LedgerEntry
from tests.api.test_cancel_list import GatedStorage
from tests.live import LiveServer, make_body, media_body, ref_url

TZ = ZoneInfo("Asia/Shanghai")


def billed(make_server: Any, **overrides: Any) -> LiveServer:
    return make_server(billing=True, **overrides)  # type: ignore[no-any-return]


def open_account(server: LiveServer, owner: str, credit: str, **limits: Any) -> str:
    accounts.create(server.service.db, owner, credit=to_micro(credit), tz=TZ, **limits)
    return server.new_key(owner)


def entries(server: LiveServer, task_id: str) -> dict[str, int]:
    with server.service.db.connect() as conn:
        rows = conn.execute(select(LedgerEntry.kind, LedgerEntry.amount).where(LedgerEntry.task_id == task_id)).all()
    return {kind: amount for kind, amount in rows}


def balance(server: LiveServer, owner: str) -> Decimal:
    return Decimal(accounts.show(server.service.db, owner, tz=TZ).balance) / 1_000_000


def test_a_success_is_charged_the_list_price_of_its_usage(make_server: Any) -> None:
    server = billed(make_server)
    key = open_account(server, "acme", "10")
    # wan2.6-r2v-flash at 720P with sound: 0.3 a second. Images only: 5 seconds held, 5 billed.
    task_id = server.create(make_body("character1 waves", size="1280*720", duration=5), key=key)
    assert entries(server, task_id) == {"hold": -to_micro("1.5")}
    assert balance(server, "acme") == Decimal("8.5")  # the hold is not spendable meanwhile
    body = server.wait(task_id, key=key)
    assert body["output"]["task_status"] == "SUCCEEDED"
    assert body["usage"]["duration"] == 5 and Decimal(body["usage"]["cost"]) == Decimal("1.5")
    assert entries(server, task_id) == {"hold": -to_micro("1.5"), "release": to_micro("1.5"),
                                        "charge": -to_micro("1.5")}
    assert balance(server, "acme") == Decimal("8.5")
    assert not accounts.audit(server.service.db)


@pytest.mark.parametrize(("body", "price", "held_seconds", "billed_seconds"), [
    # a reference video may add up to 5 seconds; this one used 3 (the provider caps at 5)
    (make_body("character1 waves input_s=3", urls=[ref_url("role1.mp4")], model="wan2.6-r2v",
               size="1920*1080", duration=10), "1.0", 15, 13),
    (make_body("character1 waves", model="wan2.6-r2v-flash", size="1920*1080", duration=5, audio=False),
     "0.25", 5, 5),
    (media_body("Image 1 waves", resolution="720P", duration=5), "0.6", 5, 5),
])
def test_holds_cover_the_most_a_task_can_cost_and_charges_its_usage(
        make_server: Any, body: dict[str, Any], price: str, held_seconds: int, billed_seconds: int) -> None:
    server = billed(make_server)
    key = open_account(server, "acme", "100")
    task_id = server.create(body, key=key)
    assert entries(server, task_id)["hold"] == -to_micro(Decimal(price) * held_seconds)
    done = server.wait(task_id, key=key)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    cost = Decimal(price) * billed_seconds
    assert Decimal(done["usage"]["cost"]) == cost
    assert balance(server, "acme") == 100 - cost
    assert not accounts.audit(server.service.db)


def test_failed_canceled_and_expired_tasks_cost_nothing(make_server: Any, tmp_path: Any) -> None:
    server = billed(make_server, workers=1)
    key = open_account(server, "acme", "10")
    failed = server.create(make_body("character1 waves fail=Boom"), key=key)
    assert server.wait(failed, key=key)["output"]["task_status"] == "FAILED"
    gate = tmp_path / "never"
    running = server.create(make_body(f"character1 waves gate={gate}"), key=key)
    server.wait(running, states=("RUNNING",), key=key)
    pending = server.create(make_body("character1 waves"), key=key)  # the one worker is busy
    client = server.client(key)
    assert client.post(f"/api/v1/tasks/{pending}/cancel").status_code == 200
    assert client.post(f"/api/v1/tasks/{running}/cancel").status_code == 200
    for task_id in (pending, running):
        assert server.wait(task_id, key=key)["output"]["task_status"] == "CANCELED"
    for task_id in (failed, pending, running):
        kinds = entries(server, task_id)
        assert set(kinds) == {"hold", "release"} and sum(kinds.values()) == 0, kinds
    assert balance(server, "acme") == 10
    assert accounts.show(server.service.db, "acme", tz=TZ).held == 0
    # Expiry releases what a task still holds, whatever its state.
    stuck = server.create(make_body(f"character1 waves gate={gate}"), key=key)
    server.wait(stuck, states=("RUNNING",), key=key)
    server.service.sweeper.retention_ms = -1  # everything is past retention now
    server.service.sweeper.sweep()
    assert sum(entries(server, stuck).values()) == 0
    assert balance(server, "acme") == 10
    assert not accounts.audit(server.service.db)


def test_a_result_discarded_by_a_cancel_costs_nothing(make_server: Any, tmp_path: Path) -> None:
    """The video is finished but not yet recorded when the cancel is accepted: the task ends
    CANCELED and its hold is released in full, with no charge."""
    storage = GatedStorage(tmp_path / "results")
    server = billed(make_server, storage=storage)
    key = open_account(server, "acme", "10")
    task_id = server.create(make_body("character1 waves"), key=key)
    assert storage.entered.wait(30)  # the engine is done and the file is on its way
    assert server.client(key).post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    storage.release.set()
    assert server.wait(task_id, key=key)["output"]["task_status"] == "CANCELED"
    kinds = entries(server, task_id)
    assert set(kinds) == {"hold", "release"} and sum(kinds.values()) == 0, kinds
    assert balance(server, "acme") == 10
    assert accounts.show(server.service.db, "acme", tz=TZ).held == 0
    assert not accounts.audit(server.service.db)


def test_a_create_the_balance_cannot_cover_is_refused_and_makes_no_task(make_server: Any) -> None:
    server = billed(make_server)
    key = open_account(server, "acme", "1")
    client = server.client(key)
    r = client.post("/task/bailian/ref2video", json=make_body(size="1920*1080", duration=5))  # 2.5 needed
    assert r.status_code == 400 and r.json()["code"] == "Arrearage", r.text
    assert "good standing" in r.json()["message"]
    assert client.get("/api/v1/tasks").json()["total"] == 0
    with server.service.db.connect() as conn:
        assert conn.execute(select(LedgerEntry.kind).where(LedgerEntry.kind == "hold")).first() is None
    # An owner without an account cannot spend at all.
    stranger = server.new_key("nobody")
    r = server.client(stranger).post("/task/bailian/ref2video", json=make_body())
    assert r.status_code == 400 and r.json()["code"] == "Arrearage"


def test_spend_limits_hold_the_day_and_the_month(make_server: Any) -> None:
    server = billed(make_server)
    key = open_account(server, "acme", "100", daily_limit=to_micro("3"))
    client = server.client(key)
    body = make_body(size="1280*720", duration=5)  # 1.5 each
    first, second = (client.post("/task/bailian/ref2video", json=body) for _ in range(2))
    assert first.status_code == 200 and second.status_code == 200
    third = client.post("/task/bailian/ref2video", json=body)
    assert third.status_code == 400 and third.json()["code"] == "Arrearage"
    assert "daily spend limit" in third.json()["message"]
    accounts.set_limits(server.service.db, "acme", daily=None, monthly=to_micro("4"))
    fourth = client.post("/task/bailian/ref2video", json=body)
    assert fourth.status_code == 400 and "monthly spend limit" in fourth.json()["message"]


def test_billing_off_charges_nothing_and_answers_no_cost(server: LiveServer) -> None:
    task_id = server.create(make_body())
    body = server.wait(task_id)
    assert body["output"]["task_status"] == "SUCCEEDED" and "cost" not in body["usage"]
    with server.service.db.connect() as conn:
        assert conn.execute(select(LedgerEntry.id)).first() is None
