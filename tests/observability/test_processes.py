"""Real `ref2video serve` and `ref2video worker` processes: multiprocess metrics (one scrape
adds up every process sharing PROMETHEUS_MULTIPROC_DIR), the worker's own metrics port, and
JSON log lines that parse and carry request_id and task_id."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import env_for, spawn, stop, wait_healthy
from tests.live import free_port, make_body
from tests.observability.test_metrics import scrape, until, value

pytestmark = pytest.mark.slow

LIVE = "/health/live"


def _lines(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))  # every JSON-looking line must parse
    return found


def test_two_servers_share_one_scrape_and_log_json(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    ports = [free_port(), free_port()]
    procs, logs = [], []
    try:
        for n, port in enumerate(ports):
            env = env_for(tmp_path / f"data{n}", database, port=port, log_level="info", log_format="json",
                          workers=1 if n == 0 else 0, log_requests="true" if n == 1 else "false")
            env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
            logs.append(tmp_path / f"serve{n}.log")
            procs.append(spawn(["serve"], env, logs[-1]))
            wait_healthy(f"http://127.0.0.1:{port}", procs[-1])  # one at a time: the first makes the key
        a, b = (f"http://127.0.0.1:{port}" for port in ports)
        base = value(scrape(a), "ref2video_http_request_duration_seconds_count", route=LIVE)
        for _ in range(3):
            assert httpx.get(f"{a}{LIVE}").status_code == 200
        for _ in range(2):
            assert httpx.get(f"{b}{LIVE}").status_code == 200
        for url in (a, b):  # either process answers for both
            assert value(scrape(url), "ref2video_http_request_duration_seconds_count", route=LIVE) == base + 5

        key = (tmp_path / "data0" / "first-api-key.txt").read_text().strip()
        client = httpx.Client(base_url=b, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        r = client.post("/task/bailian/ref2video", json=make_body("character1 waves"))
        assert r.status_code == 200, r.text
        task_id, request_id = r.json()["output"]["task_id"], r.json()["request_id"]
        until(lambda: client.get(f"/api/v1/tasks/{task_id}").json()["output"]["task_status"] == "SUCCEEDED")
        client.close()
        # The create was counted by server b, the claim and success by server a: one scrape shows all.
        samples = scrape(b)
        assert value(samples, "ref2video_task_transitions_total", to="PENDING") >= 1
        assert value(samples, "ref2video_task_transitions_total", to="SUCCEEDED") >= 1
        assert value(samples, "ref2video_task_duration_seconds_count", engine="scripted", status="SUCCEEDED") >= 1

        def transitions() -> list[dict[str, Any]]:
            seen = [line for log in logs for line in _lines(log) if line.get("event") == "transition"]
            return seen if {"PENDING", "RUNNING", "SUCCEEDED"} <= {line["to"] for line in seen} else []

        moves = until(transitions)
        assert all(line["task_id"] == task_id for line in moves)
        assert {(line["from"], line["to"]) for line in moves} >= {
            ("new", "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "SUCCEEDED")}
        ran = next(line for line in moves if line["to"] == "SUCCEEDED")
        assert ran["engine"] == "scripted" and ran["duration_s"] is not None and ran["attempt"] == 1
        requests = [line for line in _lines(logs[1]) if line.get("event") == "request"]
        create = next(line for line in requests if line["request_id"] == request_id)
        assert create["route"] == "/task/bailian/ref2video" and create["status"] == 200
        assert create["method"] == "POST" and create["duration_ms"] >= 0
        assert all(line["request_id"] for line in requests)
        # Server a was not asked for request lines (log_requests is off by default).
        assert not [line for line in _lines(logs[0]) if line.get("event") == "request"]
        created = next(line for line in moves if line["to"] == "PENDING")
        assert created["request_id"] == request_id  # logged inside the request that made it
    finally:
        for proc in procs:
            stop(proc)


def test_a_worker_serves_metrics_on_its_port_when_asked(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    port, metrics_port = free_port(), free_port()
    server = spawn(["serve"], env_for(tmp_path / "data0", database, port=port, workers=0), tmp_path / "serve.log")
    worker = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        worker = spawn(["worker"], env_for(tmp_path / "data1", database, worker_metrics_port=metrics_port),
                       tmp_path / "worker.log")

        def scraped() -> dict[Any, float] | None:
            if worker.poll() is not None:
                raise AssertionError((tmp_path / "worker.log").read_text())
            try:
                return scrape(f"http://127.0.0.1:{metrics_port}")
            except httpx.TransportError:
                time.sleep(0.1)
                return None

        samples = until(scraped)
        assert value(samples, "ref2video_database_up") == 1
        assert {"ref2video_queue_depth", "ref2video_queue_oldest_pending_age_seconds"} <= {name for name, _ in samples}
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop(proc)
