"""Model name -> engine, from configuration. Engines are imported when a process that runs
tasks starts, and loaded on first use, so a process never pays for engines it does not run."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
from collections.abc import Callable, Collection

from ..config import Settings
from ..errors import EngineError
from .base import Engine, HeldEngine, capacity_of, is_engine

__all__ = ["EngineRegistry", "EngineGroup", "import_engine"]


def import_engine(target: str, settings: Settings | None = None) -> Engine | HeldEngine:
    """Build an engine from `module:attribute`. A class is called without arguments, or, when
    `settings` are given and it has a `from_settings` class method, built by that (so an
    engine can take operator settings without every engine having to accept them)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"engine {target!r} is not a 'module:attribute' import string")
    obj = getattr(importlib.import_module(module_name), attr)
    if isinstance(obj, type):
        build = getattr(obj, "from_settings", None)
        engine = build(settings) if settings is not None and callable(build) else obj()
    else:
        engine = obj
    if not (is_engine(engine) or isinstance(engine, HeldEngine)):
        raise TypeError(f"{target} is not an engine (it needs name, load() and generate(), "
                        "or name, capacity, models, start() and stop())")
    return engine


@dataclasses.dataclass(frozen=True)
class EngineGroup:
    """The models one engine instance serves in this process, and how many of their tasks the
    process runs at once."""

    target: str
    models: tuple[str, ...]
    engine: Engine | HeldEngine
    capacity: int

    @property
    def held(self) -> bool:
        return isinstance(self.engine, HeldEngine) and not is_engine(self.engine)


class EngineRegistry:
    """Maps models to engines; one engine instance per import string.

    `default_capacity` is the capacity of an engine that declares none.
    """

    def __init__(self, targets: dict[str, str], factory: Callable[[str], Engine | HeldEngine] = import_engine,
                 *, default_capacity: int = 1, capacities: dict[str, int] | None = None) -> None:
        self._targets = dict(targets)
        self._factory = factory
        self._default_capacity = default_capacity
        self._capacities = dict(capacities or {})  # engine name -> capacity set by the operator
        self._built: dict[str, Engine | HeldEngine] = {}
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, only: Collection[str] | None = None) -> EngineRegistry:
        """The models this process runs: those of `settings.models` (or of `only` among them)."""
        wanted = settings.models if only is None else [m for m in settings.models if m in set(only)]
        targets = {model: settings.engine_target(model) for model in wanted}
        return cls(targets, functools.partial(import_engine, settings=settings),
                   default_capacity=max(1, settings.workers), capacities=dict(settings.engine_capacity))

    @property
    def models(self) -> list[str]:
        return list(self._targets)

    def groups(self) -> list[EngineGroup]:
        """The engines of this process (built, not loaded), each with its models and capacity."""
        by_target: dict[str, list[str]] = {}
        for model, target in self._targets.items():
            by_target.setdefault(target, []).append(model)
        groups = []
        for target, models in by_target.items():
            engine = self._build(target, models[0])
            capacity = self._capacities.get(engine.name) or capacity_of(engine, self._default_capacity)
            groups.append(EngineGroup(target, tuple(models), engine, capacity))
        return groups

    def get(self, model: str) -> Engine:
        """The loaded threaded engine of `model`."""
        target = self._targets[model]
        engine = self._build(target, model)
        if not is_engine(engine):
            raise EngineError(f"the engine for {model!r} holds its tasks itself; no worker runs them")
        with self._lock:
            if target not in self._loaded:
                try:
                    engine.load()
                except (ImportError, AttributeError, TypeError, ValueError) as exc:
                    raise EngineError(f"the engine for {model!r} is not available: {exc}") from exc
                self._loaded.add(target)
        return engine

    def _build(self, target: str, model: str) -> Engine | HeldEngine:
        with self._lock:
            engine = self._built.get(target)
            if engine is None:
                try:
                    engine = self._factory(target)
                except (ImportError, AttributeError, TypeError, ValueError) as exc:
                    # A configuration problem, not the request's: say so plainly.
                    raise EngineError(f"the engine for {model!r} is not available: {exc}") from exc
                self._built[target] = engine
        return engine
