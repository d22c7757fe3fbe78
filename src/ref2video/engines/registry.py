"""Model name -> engine, from configuration. Engines are imported and loaded on first use,
so the server starts without the heavy dependencies of engines it is not asked to run."""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable

from ..config import Settings
from ..errors import EngineError
from .base import Engine

__all__ = ["EngineRegistry", "import_engine"]


def import_engine(target: str, settings: Settings | None = None) -> Engine:
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
    if not isinstance(engine, Engine):
        raise TypeError(f"{target} is not an engine (it needs name, load() and generate())")
    return engine


class EngineRegistry:
    """Maps models to loaded engines; one engine instance per import string."""

    def __init__(self, targets: dict[str, str], factory: Callable[[str], Engine] = import_engine) -> None:
        self._targets = dict(targets)
        self._factory = factory
        self._loaded: dict[str, Engine] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineRegistry:
        """The models that worker threads run: all but those the relay serves."""
        relayed = settings.relay_models
        targets = {model: settings.engine_target(model) for model in settings.models if model not in relayed}
        return cls(targets, functools.partial(import_engine, settings=settings))

    @property
    def models(self) -> list[str]:
        return list(self._targets)

    def get(self, model: str) -> Engine:
        target = self._targets[model]
        with self._lock:
            engine = self._loaded.get(target)
            if engine is None:
                try:
                    engine = self._factory(target)
                    engine.load()
                except (ImportError, AttributeError, TypeError, ValueError) as exc:
                    # A configuration problem, not the request's: say so plainly.
                    raise EngineError(f"the engine for {model!r} is not available: {exc}") from exc
                self._loaded[target] = engine
        return engine
