"""Cancel (PENDING at once, RUNNING through the engine) and the task list."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from ref2video.storage.local import LocalStorage
from ref2video.store.models import Task
from tests.live import LiveServer


def cancel(server: LiveServer, task_id: str, key: str | None = None):  # noqa: ANN201
    return server.client(key).post(f"/api/v1/tasks/{task_id}/cancel")


def test_a_pending_task_is_canceled_and_never_runs(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    task_id = server.create()
    r = cancel(server, task_id)
    assert r.status_code == 200 and set(r.json()) == {"request_id"}
    out = server.get(task_id)["output"]
    assert out["task_status"] == "CANCELED" and "end_time" in out
    # A second cancel, and a cancel of a finished task, are unsupported.
    r = cancel(server, task_id)
    assert r.status_code == 400 and r.json()["code"] == "UnsupportedOperation"


def test_a_running_task_gets_a_cancel_request_that_the_engine_sees(server: LiveServer) -> None:
    task_id = server.create(prompt="steps=2000 step_ms=50")  # 100 s unless the engine stops
    server.wait(task_id, states=("RUNNING",))
    assert cancel(server, task_id).status_code == 200
    out = server.wait(task_id, timeout=30)["output"]
    assert out["task_status"] == "CANCELED" and out["progress"] < 100
    assert not [item for item in server.service.storage.listing() if item.name.endswith(".mp4")]


class GatedStorage(LocalStorage):
    """Result storage that holds each `put` until the test lets it go: the moment a video is
    finished but not yet recorded."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, key: str, source: Path) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the gate"
        super().put(key, source)


def test_a_cancel_accepted_as_the_video_finishes_ends_canceled(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 200 to a cancel is a promise: the result finishing at that moment is discarded."""
    storage = GatedStorage(tmp_path / "results")
    server = make_server(storage=storage)
    task_id = server.create()
    assert storage.entered.wait(30)  # the engine is done and the file is on its way
    assert cancel(server, task_id).status_code == 200
    storage.release.set()
    body = server.wait(task_id)
    assert body["output"]["task_status"] == "CANCELED"
    assert "usage" not in body and "video_url" not in body["output"]
    assert not [p for p in storage.root.iterdir()], "the discarded result must be deleted"


def test_cancel_of_a_finished_task_is_unsupported(server: LiveServer) -> None:
    task_id = server.create()
    server.wait(task_id)
    r = cancel(server, task_id)
    assert r.status_code == 400 and r.json()["code"] == "UnsupportedOperation"


def test_list_is_newest_first_paged_and_filtered(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    ids = [server.create(model="wan2.6-r2v" if i % 2 else "wan2.6-r2v-flash") for i in range(5)]
    cancel(server, ids[0])
    client = server.client()
    body = client.get("/api/v1/tasks", params={"page_size": 2}).json()
    assert body["total"] == 5 and body["total_page"] == 3 and body["page_no"] == 1 and body["page_size"] == 2
    assert [d["task_id"] for d in body["data"]] == [ids[4], ids[3]]
    item = body["data"][0]
    assert set(item) == {"task_id", "status", "model_name", "gmt_create", "start_time", "end_time", "prompt"}
    assert item["prompt"] == "character1 waves"  # an extension: the provider lists no prompt
    assert isinstance(item["gmt_create"], int) and item["gmt_create"] > 1_700_000_000_000
    page3 = client.get("/api/v1/tasks", params={"page_size": 2, "page_no": 3}).json()
    assert [d["task_id"] for d in page3["data"]] == [ids[0]]
    r26 = client.get("/api/v1/tasks", params={"model_name": "wan2.6-r2v"}).json()
    assert sorted(d["task_id"] for d in r26["data"]) == sorted([ids[1], ids[3]])
    canceled = client.get("/api/v1/tasks", params={"status": "CANCELED"}).json()
    assert [d["task_id"] for d in canceled["data"]] == [ids[0]]


def test_list_filters_by_time_window(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    old, new = server.create(), server.create()
    hour_ago = datetime.now(ZoneInfo(server.service.settings.timezone)) - timedelta(hours=1)
    with server.service.db.begin() as conn:
        ms = int(hour_ago.timestamp() * 1000)
        conn.execute(Task.__table__.update().where(Task.id == old).values(submitted_at=ms))
    fmt = "%Y%m%d%H%M%S"
    window = {"start_time": (hour_ago - timedelta(minutes=1)).strftime(fmt),
              "end_time": (hour_ago + timedelta(minutes=1)).strftime(fmt)}
    body = server.client().get("/api/v1/tasks", params=window).json()
    assert [d["task_id"] for d in body["data"]] == [old]
    recent = {"start_time": (hour_ago + timedelta(minutes=30)).strftime(fmt)}
    assert [d["task_id"] for d in server.client().get("/api/v1/tasks", params=recent).json()["data"]] == [new]


def set_ids(server: LiveServer, ids: dict[str, str]) -> None:
    """Give tasks chosen ids (old -> new), so prefixes can be made to collide."""
    with server.service.db.begin() as conn:
        for old, new in ids.items():
            conn.execute(Task.__table__.update().where(Task.id == old).values(id=new))


def test_list_filters_by_id_prefix(make_server) -> None:  # type: ignore[no-untyped-def]
    """The ref2video extension `task_id_prefix`: exact case, no wildcards, the caller's own tasks only."""
    server = make_server(workers=0)
    made = [server.create() for _ in range(3)]
    others = server.create(key=server.new_key(owner="someone-else"))
    set_ids(server, {made[0]: "abcd1111-0000-4000-8000-000000000000", made[1]: "abcd2222-0000-4000-8000-000000000000",
                     made[2]: "abce3333-0000-4000-8000-000000000000",
                     others: "abcd9999-0000-4000-8000-000000000000"})
    client = server.client()

    def found(prefix: str) -> list[str]:
        r = client.get("/api/v1/tasks", params={"task_id_prefix": prefix})
        assert r.status_code == 200, r.text
        assert r.json()["total"] == len(r.json()["data"])
        return sorted(d["task_id"] for d in r.json()["data"])

    assert found("abcd") == ["abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"]
    assert found("abcd2") == ["abcd2222-0000-4000-8000-000000000000"]
    assert found("abc") == found("abcd") + ["abce3333-0000-4000-8000-000000000000"]
    for nothing in ("ABCD", "abc%", "ab_d", "abcd9", "ä" * 3, "a" * 65):
        assert found(nothing) == [], nothing
    assert found("") == found("abc")  # empty: no filter
    r = client.get("/api/v1/tasks", params={"task_id_prefix": "ab\x00"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
    spec = client.get("/openapi.json").json()["paths"]["/api/v1/tasks"]["get"]["parameters"]
    assert "task_id_prefix" in [p["name"] for p in spec]


def test_list_rejects_bad_parameters(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(workers=0)
    client = server.client()
    for params, words in [({"page_no": "0"}, "page_no"), ({"page_size": "abc"}, "page_size"),
                          ({"page_size": "1000"}, "page_size"), ({"start_time": "2026-01-01"}, "start_time"),
                          ({"status": "DONE"}, "status")]:
        r = client.get("/api/v1/tasks", params=params)
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter" and words in r.json()["message"]


def test_cancel_is_a_compare_and_set(make_server) -> None:  # type: ignore[no-untyped-def]
    """Cancel racing a claim: exactly one wins, and the row says which."""
    server = make_server(workers=0)
    task_id = server.create()
    claim = server.service.manager.claim(["wan2.6-r2v-flash"])
    assert claim is not None and claim.task.id == task_id
    assert cancel(server, task_id).status_code == 200  # RUNNING: a request, not a state change
    with server.service.db.connect() as conn:
        row = conn.execute(select(Task.status, Task.cancel_requested).where(Task.id == task_id)).one()
    assert tuple(row) == ("RUNNING", True)
    assert server.service.manager.heartbeat(claim) is True
