"""The public surface is what `__all__` says (httpx's test of the same name)."""

from __future__ import annotations

import importlib
import pkgutil

import ref2video


def test_top_level_all_matches_public_names() -> None:
    public = {name for name in dir(ref2video) if not name.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(ref2video.__path__)}
    assert set(ref2video.__all__) - {"__version__"} == public - modules


def test_every_module_declares_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(ref2video.__path__, "ref2video."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not info.ispkg and not hasattr(module, "__all__"):
            missing.append(info.name)
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{info.name}.__all__ names {name}, which does not exist"
    assert not missing, missing
