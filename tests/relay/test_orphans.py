"""Orphans: tasks whose submit left (its intent is recorded) but whose upstream id never was.

Each test makes the orphan as a crash would leave it: the task row, requeued by the reaper,
with an intent and no upstream id, and (or not) a task at the provider made by that submit.
A relay that then claims it must adopt the provider's task, or fail cleanly, never submit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from ref2video.engines.dashscope.engine import account_of
from ref2video.store.db import now_ms
from ref2video.store.models import Task
from tests.live import LiveServer, make_body
from tests.relay.relays import QUICK, provider_tasks, row, start_provider, start_relay


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_provider(tmp_path)
    yield server
    server.stop()


def orphan(tmp_path: Path, database_url: str, provider: LiveServer, prompts: list[str], *,
           reached: bool) -> list[str]:
    """Create tasks on an API-only relay, then make them orphans: an intent a minute old and,
    when `reached`, the same bodies submitted to the provider."""
    api = start_relay(tmp_path, database_url, provider.url, [provider.key], name="api", workers=0)
    try:
        ids = [api.create(make_body(p)) for p in prompts]
        with api.service.db.begin() as conn:
            conn.execute(update(Task).where(Task.id.in_(ids)).values(
                upstream_submit_at=now_ms() - 60_000, upstream_account=account_of(provider.key),
                engine="dashscope"))
    finally:
        api.stop()
    if reached:
        for p in prompts:
            submit_upstream(provider, p)
    return ids


def submit_upstream(provider: LiveServer, prompt: str) -> None:
    """What a relay's submit does at the provider: a task made from `prompt`."""
    r = httpx.post(f"{provider.url}/api/v1/services/aigc/video-generation/video-synthesis",
                   json=make_body(prompt), headers={"Authorization": f"Bearer {provider.key}",
                                                    "X-DashScope-Async": "enable"})
    assert r.status_code == 200


def test_an_orphan_that_reached_the_provider_is_adopted(tmp_path: Path, provider: LiveServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    (task_id,) = orphan(tmp_path, database_url, provider, [QUICK], reached=True)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"
        (upstream,) = provider_tasks(provider)  # adopted, not submitted again
        found = row(relay, task_id)
        assert found.upstream_id == upstream.id and found.upstream_adopted
    finally:
        relay.stop()


def test_an_orphan_the_provider_never_saw_fails_cleanly(tmp_path: Path, provider: LiveServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    (task_id,) = orphan(tmp_path, database_url, provider, [QUICK], reached=False)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        out = relay.wait(task_id, timeout=30)["output"]
        assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.SubmitUnconfirmed")
        assert "nothing was charged" in out["message"]
        assert provider_tasks(provider) == []
    finally:
        relay.stop()


def test_orphans_submitted_together_are_told_apart_by_their_prompts(tmp_path: Path, provider: LiveServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    prompts = [f"character1 {verb} steps=2 step_ms=20" for verb in ("waves", "jumps", "sings")]
    ids = orphan(tmp_path, database_url, provider, prompts, reached=True)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        for task_id, prompt in zip(ids, prompts):
            out = relay.wait(task_id, timeout=60)["output"]
            assert out["task_status"] == "SUCCEEDED" and out["orig_prompt"] == prompt
        upstream = {t.id: t.spec["prompt"] for t in provider_tasks(provider)}
        assert len(upstream) == 3
        for task_id, prompt in zip(ids, prompts):
            assert upstream[row(relay, task_id).upstream_id] == prompt  # each got its own video
    finally:
        relay.stop()


def test_a_provider_task_that_is_already_someone_elses_is_not_adopted(tmp_path: Path, provider: LiveServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:  # an ordinary task, recorded as usual, submitted just now
        done = relay.create(make_body(QUICK))
        assert relay.wait(done, timeout=30)["output"]["task_status"] == "SUCCEEDED"
    finally:
        relay.stop()
    (task_id,) = orphan(tmp_path, database_url, provider, [QUICK], reached=False)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key], name="relay2")
    try:
        out = relay.wait(task_id, timeout=30)["output"]
        assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.SubmitUnconfirmed")
        assert len(provider_tasks(provider)) == 1
    finally:
        relay.stop()


def test_orphans_whose_only_candidates_failed_upstream_fail_too(tmp_path: Path, provider: LiveServer) -> None:
    """Two submits cut off together: one reached the provider, which failed it, the other never
    left. A failed task echoes no prompt, so neither orphan can tell whose it is; but whichever
    it is, the provider made nothing that succeeded for either, and both end FAILED (the one
    left last, with no sibling any more, takes the failed task and its code). Before, each
    stayed RUNNING (and its hold held) for an hour, waiting for the other to be recorded."""
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    prompts = ["character1 trips fail=DataInspectionFailed", "character1 waves steps=2 step_ms=20"]
    ids = orphan(tmp_path, database_url, provider, prompts, reached=False)
    submit_upstream(provider, prompts[0])
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        outs = [relay.wait(task_id, timeout=40)["output"] for task_id in ids]
        assert [out["task_status"] for out in outs] == ["FAILED", "FAILED"]
        assert {out["code"] for out in outs} <= {"InternalError.SubmitUnconfirmed", "DataInspectionFailed"}
        assert len(provider_tasks(provider)) == 1  # and nothing was submitted again
    finally:
        relay.stop()


def test_an_orphan_whose_task_failed_upstream_gets_the_providers_code_once_its_sibling_is_adopted(
        tmp_path: Path, provider: LiveServer) -> None:
    """Both submits reached the provider: one failed there, one succeeded. The failed one is not
    given up on at the first look; once the other orphan has adopted its task, it is the one
    candidate left, and its task ends with the provider's own code."""
    database_url = f"sqlite:///{tmp_path / 'relay.db'}"
    prompts = ["character1 trips fail=DataInspectionFailed", "character1 waves steps=2 step_ms=20"]
    failed, succeeded = orphan(tmp_path, database_url, provider, prompts, reached=True)
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key])
    try:
        assert relay.wait(succeeded, timeout=40)["output"]["task_status"] == "SUCCEEDED"
        out = relay.wait(failed, timeout=40)["output"]
        assert (out["task_status"], out["code"]) == ("FAILED", "DataInspectionFailed"), out
        assert len(provider_tasks(provider)) == 2
    finally:
        relay.stop()
