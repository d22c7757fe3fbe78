"""Running held engines (engines/base.py): each gets a journal of its own, with one lease token
for every task it holds, the storage and uploads of the process, and its capacity (the
registry's: `engine_capacity`, else what the engine declares)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..engines.base import HeldEngine, Journal
from ..storage.base import Storage
from .journal import TableJournal
from .manager import QueueManager
from .wakeup import Wakeup

__all__ = ["HeldRuntime", "Host"]


@dataclasses.dataclass
class Host:
    """The `EngineHost` lent to one held engine."""

    journal: Journal
    storage: Storage
    resolve_upload: Callable[[str, str], Path | None]
    capacity: int

    def own_upload(self, owner: str, key: str) -> Path | None:
        return self.resolve_upload(owner, key)


class HeldRuntime:
    """Starts and stops the held engines of one process."""

    def __init__(self, engines: list[tuple[HeldEngine, int]], manager: QueueManager, wakeup: Wakeup,
                 storage: Storage, resolve_upload: Callable[[str, str], Path | None]) -> None:
        """`engines`: each held engine with the tasks it may hold at once in this process."""
        self.engines = [engine for engine, _ in engines]
        self.hosts = [Host(TableJournal(manager, wakeup, engine.name), storage, resolve_upload, capacity)
                      for engine, capacity in engines]

    def start(self) -> None:
        for engine, host in zip(self.engines, self.hosts, strict=True):
            engine.start(host)

    def stop(self, grace: float) -> None:
        for engine in self.engines:
            engine.stop(grace)

    @property
    def running(self) -> int:
        return sum(int(getattr(engine, "in_flight", 0)) for engine in self.engines)
