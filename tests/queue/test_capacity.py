"""Engine capacity: a process runs no more tasks of an engine at once than the engine declares,
and `worker_models` chooses which models' tasks a process runs at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ref2video.config import Settings
from ref2video.engines.base import GenerationRequest, GenerationResult, JobContext
from ref2video.engines.preview.engine import PreviewEngine
from ref2video.engines.registry import EngineRegistry
from tests.fixtures.engines import ScriptedEngine
from tests.live import LiveServer, make_body, media_body


class CountingEngine(ScriptedEngine):
    """The scripted engine, declaring a capacity and counting the tasks it runs at once."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().generate(request, context)
        finally:
            with self._lock:
                self.running -= 1


def _registry(engines: dict[str, CountingEngine], models: dict[str, str]) -> EngineRegistry:
    """`models`: model -> engine name in `engines`."""
    return EngineRegistry({model: name for model, name in models.items()}, factory=lambda name: engines[name],
                          default_capacity=8)


def test_an_engine_of_capacity_one_never_runs_two_tasks_at_once(make_server: Any, tmp_path: Path) -> None:
    solo, wide = CountingEngine("solo", 1), CountingEngine("wide", 3)
    registry = _registry({"solo": solo, "wide": wide},
                         {"wan2.6-r2v": "solo", "wan2.6-r2v-flash": "solo", "wan2.7-r2v": "wide"})
    server: LiveServer = make_server(workers=8, registry=registry)
    gate = tmp_path / "open"
    # The wide engine's three tasks wait on a gate until all three run at once: its capacity is
    # its own, and the solo engine's tasks do not hold its threads.
    wide_ids = [server.create(media_body(f"Image 1 waves gate={gate}")) for _ in range(3)]
    solo_ids = [server.create(make_body("character1 waves steps=4 step_ms=25", model=model))
                for model in ("wan2.6-r2v", "wan2.6-r2v-flash") * 3]
    for task_id in solo_ids:
        assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    for task_id in wide_ids:
        server.wait(task_id, states=("RUNNING",))
    assert wide.running == 3
    gate.touch()
    for task_id in wide_ids:
        assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    assert solo.most == 1
    assert wide.most == 3


def test_a_process_runs_only_the_models_it_was_given(make_server: Any) -> None:
    server: LiveServer = make_server(workers=2, worker_models=["wan2.6-r2v-flash"])
    other = server.create(make_body("character1 waves steps=1", model="wan2.6-r2v"))  # older, so first in line
    mine = server.create(make_body("character1 waves steps=1", model="wan2.6-r2v-flash"))
    assert server.wait(mine)["output"]["task_status"] == "SUCCEEDED"
    assert server.get(other)["output"]["task_status"] == "PENDING"
    assert set(server.service.registry.models) == {"wan2.6-r2v-flash"}


def test_the_preview_engine_declares_a_few_tasks_at_once(tmp_path: Path) -> None:
    """Its own capacity, one a core up to four, whatever `workers` says (that is the capacity of
    an engine that declares none); the operator's `engine_capacity` wins. Before, it declared
    none and ran `workers` (1 by default)."""
    cores = min(4, os.cpu_count() or 1)
    assert PreviewEngine().capacity == cores
    (group,) = EngineRegistry.from_settings(Settings(data_dir=tmp_path, workers=1)).groups()
    assert group.engine.name == "preview" and group.capacity == cores
    (group,) = EngineRegistry.from_settings(Settings(data_dir=tmp_path, engine_capacity={"preview": 3})).groups()
    assert group.capacity == 3
