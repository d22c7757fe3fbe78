"""The relay's capacity: a relay process holds no more tasks at once than its capacity, whether
the operator set it for the engine (`engine_capacity`) or for the relay (`dashscope_max_in_flight`).
Before, `engine_capacity` did not reach the relay, which held up to `dashscope_max_in_flight`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ref2video.store.models import Task
from tests.live import LiveServer, make_body
from tests.relay.relays import QUICK, RELAYED, provider_tasks, row, start_provider, start_relay, wait_for


def _times(server: LiveServer, task_id: str) -> tuple[int | None, int | None]:
    """(first claimed, ended) of a task, in the server's table."""
    with server.service.db.connect() as conn:
        r = conn.execute(select(Task.scheduled_at, Task.ended_at).where(Task.id == task_id)).one()
    return r.scheduled_at, r.ended_at


@pytest.mark.parametrize("setting", [{"engine_capacity": {"dashscope": 1}}, {"dashscope_max_in_flight": 1}],
                         ids=["engine_capacity", "dashscope_max_in_flight"])
def test_a_relay_of_capacity_one_never_holds_two_tasks_at_once(
        tmp_path: Path, database_url: str, setting: dict[str, Any]) -> None:
    provider = start_provider(tmp_path, workers=2)  # room for both, were both sent
    relay = start_relay(tmp_path, database_url, provider.url, [provider.key], **setting)
    gate = tmp_path / "open"
    try:
        assert relay.service.held_slots == [("dashscope", list(RELAYED), 1)]  # what `ref2video worker` reports
        ids = [relay.create(make_body(f"{QUICK} gate={gate}")) for _ in range(2)]
        # One task runs at the provider until the gate opens; the relay holds it all that time.
        running = wait_for(lambda: [t for t in ids if row(relay, t).upstream_status == "RUNNING"],
                           what="a task running upstream")
        assert len(running) == 1, "both tasks were sent to the provider at once"
        (other,) = set(ids) - set(running)
        assert row(relay, other).status == "PENDING" and row(relay, other).upstream_id is None
        assert len(provider_tasks(provider)) == 1
        gate.touch()
        for task_id in ids:
            assert relay.wait(task_id, timeout=30)["output"]["task_status"] == "SUCCEEDED"
        # The other was claimed only once the first had ended in the table, not merely upstream.
        claimed, _ = _times(relay, other)
        _, ended = _times(relay, running[0])
        assert claimed is not None and ended is not None and claimed >= ended
        assert len(provider_tasks(provider)) == 2
    finally:
        relay.stop()
        provider.stop()
