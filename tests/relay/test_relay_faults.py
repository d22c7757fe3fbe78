"""The relay through a `FaultProxy` that breaks its calls: every task ends SUCCEEDED or FAILED
with a clear code, no task is submitted twice, and no task the provider made is lost."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer, make_body, ref_url
from tests.relay.proxy import FaultProxy, Rule
from tests.relay.relays import provider_tasks, row, start_provider, start_relay, wait_for

SUBMIT = "/video-synthesis"
QUERY = r"/api/v1/tasks/[^/?]+$"
LIST = r"/api/v1/tasks\?"


def soak_rules(proxy: FaultProxy) -> None:
    """Every kind of fault on every kind of call: each once for certain, then at random (seeded)."""
    for rule in (
        *(Rule(action, "POST", SUBMIT, status=500) for action in ("drop", "drop_after", "status_after", "broken_json")),
        Rule("drop", "GET", QUERY),
        Rule("cut", "GET", r"\.mp4"),
    ):
        proxy.add(rule)
    for rule in (
        # Submits: lost before the provider saw them, or after it acted.
        Rule("drop", "POST", SUBMIT, times=-1, probability=0.1),
        Rule("drop_after", "POST", SUBMIT, times=-1, probability=0.1),
        Rule("status", "POST", SUBMIT, times=-1, probability=0.1, status=429, headers={"Retry-After": "1"}),
        Rule("status_after", "POST", SUBMIT, times=-1, probability=0.1, status=500),
        Rule("broken_json", "POST", SUBMIT, times=-1, probability=0.1),
        Rule("hold", "POST", SUBMIT, times=-1, probability=0.05, hold=3.5),  # past the relay's timeout
        # Queries and list pages.
        Rule("status", "GET", QUERY, times=-1, probability=0.1, status=500),
        Rule("status", "GET", QUERY, times=-1, probability=0.05, status=429, headers={"Retry-After": "1"}),
        Rule("drop", "GET", QUERY, times=-1, probability=0.05),
        Rule("broken_json", "GET", QUERY, times=-1, probability=0.05),
        Rule("hold", "GET", QUERY, times=-1, probability=0.05, hold=3.5),
        Rule("status", "GET", LIST, times=-1, probability=0.2, status=503),
        # Uploads and the result download.
        Rule("status", "GET", r"/uploads\?", times=-1, probability=0.2, status=500),
        Rule("cut", "GET", r"\.mp4", times=-1, probability=0.2),
        Rule("drop", "GET", r"\.mp4", times=-1, probability=0.1),
    ):
        proxy.add(rule)


@pytest.mark.parametrize("seed", [7, 11])
def test_every_task_ends_once_whatever_breaks_between_relay_and_provider(tmp_path: Path, seed: int) -> None:
    provider = start_provider(tmp_path)
    proxy = FaultProxy(provider.url, seed=seed)
    soak_rules(proxy)
    relay = start_relay(tmp_path, f"sqlite:///{tmp_path / 'relay.db'}", proxy.url, [provider.key],
                        max_attempts=6, poll_interval=0.5)
    try:
        image = httpx.get(ref_url("a.png")).content
        upload = relay.client().post("/api/v1/uploads", files={"file": ("hero.png", image)})
        prompts = [f"character1 dances, take {i} steps=3 step_ms=30" for i in range(10)]
        ids = [relay.create(make_body(p, urls=[upload.json()["output"]["url"]] if i % 4 == 0 else None))
               for i, p in enumerate(prompts)]
        ends = [relay.wait(task_id, timeout=120)["output"] for task_id in ids]
        assert_every_task_ended_once(relay, provider, ids, prompts, ends)
        assert any(o["task_status"] == "SUCCEEDED" for o in ends)
        broken = Counter(hit.action for hit in proxy.hits)
        assert {"drop", "drop_after", "status", "status_after", "broken_json", "cut"} <= set(broken), broken
    finally:
        relay.stop()
        proxy.close()
        provider.stop()


def assert_every_task_ended_once(relay: LiveServer, provider: LiveServer, ids: list[str], prompts: list[str],
                                 ends: list[dict]) -> None:
    for out in ends:
        assert out["task_status"] in ("SUCCEEDED", "FAILED"), out
        if out["task_status"] == "FAILED":
            assert out["code"] and out["message"], out
    made = Counter(task.spec["prompt"] for task in provider_tasks(provider))
    assert all(count == 1 for count in made.values()), f"submitted twice: {made}"
    upstream_of = {task.spec["prompt"]: task.id for task in provider_tasks(provider)}
    for task_id, prompt, out in zip(ids, prompts, ends):
        recorded = row(relay, task_id).upstream_id
        if prompt in upstream_of:  # the provider made it: it is ours, not lost
            assert recorded == upstream_of[prompt], (prompt, out)
        if out["task_status"] == "SUCCEEDED":
            assert recorded is not None and prompt in upstream_of


def test_polls_that_keep_failing_spend_the_budget_and_fail_with_the_providers_code(tmp_path: Path) -> None:
    provider = start_provider(tmp_path)
    proxy = FaultProxy(provider.url)
    proxy.add(Rule("status", "GET", QUERY, times=-1, status=500))
    relay = start_relay(tmp_path, f"sqlite:///{tmp_path / 'relay.db'}", proxy.url, [provider.key],
                        dashscope_retry_budget=3)
    try:
        task_id = relay.create(make_body("character1 waves steps=2 step_ms=10"))
        out = relay.wait(task_id, timeout=60)["output"]
        assert (out["task_status"], out["code"]) == ("FAILED", "InternalError")
        assert "gave up after 3 failed queries" in out["message"]
        assert proxy.forwarded("POST", SUBMIT) == 1
    finally:
        relay.stop()
        proxy.close()
        provider.stop()


def test_the_query_rate_of_one_account_stays_under_its_limit(tmp_path: Path) -> None:
    provider = start_provider(tmp_path, workers=0)  # nothing ends: the relay polls on and on
    proxy = FaultProxy(provider.url)
    relay = start_relay(tmp_path, f"sqlite:///{tmp_path / 'relay.db'}", proxy.url, [provider.key],
                        dashscope_query_rate=5.0)
    try:
        ids = [relay.create(make_body(f"character1 waits {i}")) for i in range(30)]
        wait_for(lambda: all(row(relay, i).upstream_id for i in ids), what="30 submits")
        wait_for(lambda: sum(1 for h in proxy.hits if h.method == "GET") >= 40, timeout=30, what="40 polls")
        times = sorted(h.at for h in proxy.hits if h.method == "GET" and "/api/v1/tasks" in h.path)
        most = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
        assert most <= 5 + 1, most  # +1: arrival jitter of the proxy's own clock
    finally:
        relay.stop()
        proxy.close()
        provider.stop()


def test_many_tasks_on_one_account_are_followed_through_the_task_list(tmp_path: Path) -> None:
    """Past 50 tasks in flight on an account, the poller reads the provider's task list (100 a
    page) and counts each task seen there as polled; single queries are left for tasks that
    ended, so the account's budget covers far more tasks than one query each every 15 s would."""
    provider = start_provider(tmp_path, workers=2)
    proxy = FaultProxy(provider.url)
    relay = start_relay(tmp_path, f"sqlite:///{tmp_path / 'relay.db'}", proxy.url, [provider.key])
    gate = tmp_path / "gate"  # the provider's tasks wait for it: 70 are in flight at once
    try:
        ids = [relay.create(make_body(f"character1 counts {i} steps=5 step_ms=20 gate={gate}")) for i in range(70)]
        wait_for(lambda: any("/api/v1/tasks?" in h.path for h in proxy.hits), timeout=60, what="a list scan")
        gate.touch()
        for task_id in ids:
            assert relay.wait(task_id, timeout=120)["output"]["task_status"] == "SUCCEEDED"
        pages = [h for h in proxy.hits if h.method == "GET" and "/api/v1/tasks?" in h.path]
        singles = [h for h in proxy.hits if h.method == "GET" and re.search(QUERY, h.path)]
        assert pages and all("page_size=100" in h.path for h in pages)
        assert len(provider_tasks(provider)) == 70
        # Single queries: a few fast polls of each task early on, and one when it ended.
        assert len(singles) < 4 * len(ids), len(singles)
    finally:
        relay.stop()
        proxy.close()
        provider.stop()
