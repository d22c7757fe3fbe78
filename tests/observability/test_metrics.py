"""/metrics over real HTTP: the figures move as tasks run (task table gauges, transitions,
durations, HTTP latency by route template, credits charged), and readiness and liveness."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ref2video.app import accounts
from ref2video.app.ledger import to_micro
from ref2video.store.models import LedgerEntry
from ref2video.storage.local import LocalStorage
from tests.live import LiveServer, make_body, ref_url, settings_for, start_server
from tests.relay.relays import start_provider, start_relay
from tests.tcp_proxy import TcpProxy

MODEL = "wan2.6-r2v-flash"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def until(check: Callable[[], Any], pause: float = 0.05) -> Any:
    """Wait for `check()` to be truthy (pytest-timeout bounds the wait); its value."""
    while not (result := check()):
        time.sleep(pause)
    return result


def test_the_figures_move_as_tasks_run(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    before = scrape(server.url)
    assert value(before, "ref2video_database_up") == 1
    ok = server.create(make_body("character1 waves steps=2"))
    failed = server.create(make_body("character1 waves fail=InvalidParameter"))
    assert server.wait(ok)["output"]["task_status"] == "SUCCEEDED"
    assert server.wait(failed)["output"]["task_status"] == "FAILED"

    def moved() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        now = scrape(server.url)  # the table's figures are remembered for a moment: ask again
        return now if value(now, "ref2video_tasks", status="SUCCEEDED", model=MODEL) == 1 else None

    after = until(moved)
    assert value(after, "ref2video_tasks", status="FAILED", model=MODEL) == 1
    assert value(after, "ref2video_tasks", status="PENDING", model=MODEL) == 0
    assert value(after, "ref2video_tasks", status="RUNNING", model=MODEL) == 0
    assert value(after, "ref2video_queue_depth") == 0
    assert value(after, "ref2video_queue_oldest_pending_age_seconds") == 0

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Counted when each change committed (in-process figures, so compared with before).
    assert delta("ref2video_task_transitions_total", to="PENDING") == 2
    assert delta("ref2video_task_transitions_total", to="RUNNING") == 2
    assert delta("ref2video_task_transitions_total", to="SUCCEEDED") == 1
    assert delta("ref2video_task_transitions_total", to="FAILED") == 1
    assert delta("ref2video_task_duration_seconds_count", engine="scripted", status="SUCCEEDED") == 1
    assert delta("ref2video_task_duration_seconds_count", engine="scripted", status="FAILED") == 1
    assert delta("ref2video_task_duration_seconds_sum", engine="scripted", status="SUCCEEDED") > 0
    # HTTP latency by route template, never by raw path.
    assert delta("ref2video_http_request_duration_seconds_count", method="POST", route="/task/bailian/ref2video",
                 status="200") == 2
    assert delta("ref2video_http_request_duration_seconds_count", method="GET", route="/api/v1/tasks/{task_id}",
                 status="200") >= 2
    assert not [ls for (n, ls) in after if n.startswith("ref2video_http") and any(ok in v for _, v in ls)]
    httpx.get(f"{server.url}/no/such/route/{ok}")
    assert value(scrape(server.url), "ref2video_http_request_duration_seconds_count", route="unmatched",
                 status="404") >= 1


def test_pending_tasks_show_in_the_queue_figures(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(workers=0)
    server.create()
    server.create()

    def queued() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        now = scrape(server.url)
        return now if value(now, "ref2video_queue_depth") == 2 else None

    samples = until(queued)
    assert value(samples, "ref2video_tasks", status="PENDING", model=MODEL) == 2
    until(lambda: value(scrape(server.url), "ref2video_queue_oldest_pending_age_seconds") > 0)


def test_credits_charged_are_counted_by_model(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(billing=True)
    accounts.create(server.service.db, "acme", credit=to_micro("10"), tz=ZoneInfo("Asia/Shanghai"))
    key = server.new_key("acme")
    before = value(scrape(server.url), "ref2video_credits_charged_micro_total", model=MODEL)
    task_id = server.create(make_body("character1 waves", size="1280*720", duration=5), key=key)
    assert server.wait(task_id, key=key)["output"]["task_status"] == "SUCCEEDED"
    with server.service.db.connect() as conn:
        charge = conn.execute(select(LedgerEntry.amount).where(
            LedgerEntry.task_id == task_id, LedgerEntry.kind == "charge")).scalar_one()
    assert charge < 0
    after = value(scrape(server.url), "ref2video_credits_charged_micro_total", model=MODEL)
    assert after - before == -charge


def test_liveness_and_readiness_answer(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "ok"}
    r = httpx.get(f"{server.url}/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "storage": "ok", "uploads": "ok"}
    assert list(server.service.storage.listing()) == []  # the probe left nothing


class _ReadOnly(LocalStorage):
    def put(self, key: str, source: Path) -> None:
        raise PermissionError(key)


def test_readiness_fails_when_the_storage_takes_no_file(make_server: Callable[..., LiveServer],
                                                         tmp_path: Path) -> None:
    server = make_server(storage=_ReadOnly(tmp_path / "ro"))
    r = httpx.get(f"{server.url}/health/ready")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["storage"] == "not writable (PermissionError)"
    assert r.json()["database"] == "ok" and r.json()["uploads"] == "ok"
    assert httpx.get(f"{server.url}/health/live").status_code == 200


@pytest.mark.postgres
def test_readiness_fails_when_the_database_is_away_and_liveness_answers(tmp_path: Path, pg_url: str) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    server = start_server(settings_for(tmp_path / "data", pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
                                       workers=0))
    try:
        assert httpx.get(f"{server.url}/health/ready").status_code == 200
        proxy.cut()
        r = httpx.get(f"{server.url}/health/ready", timeout=60)
        assert r.status_code == 503 and r.json()["database"] == "unreachable"
        assert httpx.get(f"{server.url}/health/live").json() == {"status": "ok"}
        assert value(scrape(server.url), "ref2video_database_up") in (0, 1)  # remembered a moment, then 0
        until(lambda: value(scrape(server.url), "ref2video_database_up") == 0 or None)
        proxy.restore()
        until(lambda: httpx.get(f"{server.url}/health/ready").status_code == 200)
    finally:
        server.stop()
        proxy.close()


def test_a_failed_reference_fetch_is_counted_by_reason(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    before = value(scrape(server.url), "ref2video_reference_fetch_failures_total", reason="http_status")
    task_id = server.create(make_body("character1 waves", urls=[ref_url("no-such-file.png")]))
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidURL"
    after = value(scrape(server.url), "ref2video_reference_fetch_failures_total", reason="http_status")
    assert after - before == 1


def test_the_relay_counts_provider_answers_and_tasks_in_flight(tmp_path: Path, database_url: str) -> None:
    provider = start_provider(tmp_path)
    gate = tmp_path / "gate"
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        before = scrape(relay.url)
        task_id = relay.create(make_body(f"character1 waves gate={gate}"))  # the provider's task waits
        until(lambda: value(scrape(relay.url), "ref2video_relay_tasks_in_flight", engine="dashscope")
              - value(before, "ref2video_relay_tasks_in_flight", engine="dashscope") == 1)
        gate.touch()
        assert relay.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
        after = scrape(relay.url)
        assert value(after, "ref2video_relay_tasks_in_flight", engine="dashscope") == value(
            before, "ref2video_relay_tasks_in_flight", engine="dashscope")

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("ref2video_provider_responses_total", call="submit", status="200") == 1
        assert delta("ref2video_provider_responses_total", call="query", status="200") >= 1
        assert delta("ref2video_task_duration_seconds_count", engine="dashscope", status="SUCCEEDED") == 1
    finally:
        relay.stop()
        provider.stop()


def test_a_retry_counts_as_a_move_back_to_pending(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    before = scrape(server.url)
    task_id = server.create(make_body("character1 waves retry=1"))
    assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    after = scrape(server.url)
    moves = {to: value(after, "ref2video_task_transitions_total", to=to)
             - value(before, "ref2video_task_transitions_total", to=to) for to in ("PENDING", "RUNNING", "SUCCEEDED")}
    assert moves == {"PENDING": 2, "RUNNING": 2, "SUCCEEDED": 1}  # created, claimed, retried, claimed, done
