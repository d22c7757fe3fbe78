"""A relay and its provider, both real ref2video servers on loopback: the provider runs the
scripted engine (steered by the prompt: `steps=3 step_ms=50`, `fail=CODE`, `refs=image`),
the relay serves the same models with the `dashscope` engine pointed at it (optionally through
a `FaultProxy`). Each has its own database, as two companies would."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ref2video.store.models import Task
from tests.live import LiveServer, settings_for, start_server

RELAYED = {"wan2.6-r2v-flash": "dashscope", "wan2.6-r2v": "dashscope", "wan2.7-r2v": "dashscope"}
QUICK = "character1 waves steps=3 step_ms=50"


def start_provider(root: Path, **overrides: Any) -> LiveServer:
    """The fake provider: a ref2video server that answers as the real one does. Its results are
    always served by its own links (the real provider's are OSS links, and the fault proxy sits
    in front of them), whatever storage the suite runs on."""
    values = {"storage": "local", **overrides}
    return start_server(settings_for(root / "provider", f"sqlite:///{root / 'provider.db'}", **values))


def relay_settings(root: Path, database_url: str, base: str, keys: list[str], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        models=RELAYED, dashscope_base_url=f"{base}/api/v1", dashscope_api_keys=keys,
        dashscope_timeout=3.0, dashscope_query_rate=50.0, dashscope_submit_rate=50.0,
    )
    values.update(overrides)
    return values


def start_relay(root: Path, database_url: str, base: str, keys: list[str], name: str = "relay",
                **overrides: Any) -> LiveServer:
    values = relay_settings(root, database_url, base, keys, **overrides)
    return start_server(settings_for(root / name, database_url, **values))


@dataclass
class Row:
    status: str
    upstream_id: str | None
    upstream_adopted: bool
    upstream_status: str | None
    engine: str | None


def row(server: LiveServer, task_id: str) -> Row:
    with server.service.db.connect() as conn:
        r = conn.execute(select(Task.status, Task.upstream_id, Task.upstream_adopted, Task.upstream_status,
                                Task.engine).where(Task.id == task_id)).one()
    return Row(r.status, r.upstream_id, bool(r.upstream_adopted), r.upstream_status, r.engine)


def provider_tasks(provider: LiveServer) -> list[Any]:
    """Every task the provider holds: (id, status, spec, usage)."""
    with provider.service.db.connect() as conn:
        return list(conn.execute(select(Task.id, Task.status, Task.spec, Task.usage)).all())


def wait_for(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)
