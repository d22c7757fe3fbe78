"""ref2video: a self-hostable reference-to-video task service, wire-compatible with DashScope.

The names below are loaded on first use (PEP 562): `import ref2video` (and so every
`ref2video.<module>` import, the CLI's included) does not pull in the server, the settings or
the media libraries until one of them is asked for.
"""

# Private aliases: every public name of this module is in `__all__` (tests/test_exported_members.py).
import importlib as _importlib
import typing as _typing

from .version import __version__

if _typing.TYPE_CHECKING:
    from .client import AsyncClient, Client
    from .config import Settings
    from .engines.base import Engine, GenerationRequest, GenerationResult, JobContext
    from .errors import EngineError, RetryableEngineError, TaskCanceled
    from .protocol import Status
    from .spec import TaskSpec

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Settings",
    "Status",
    "TaskSpec",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "JobContext",
    "EngineError",
    "RetryableEngineError",
    "TaskCanceled",
]

# Each public name and the module (under this package) it comes from.
_LAZY = {
    "Client": "client",
    "AsyncClient": "client",
    "Settings": "config",
    "Status": "protocol",
    "TaskSpec": "spec",
    "Engine": "engines.base",
    "GenerationRequest": "engines.base",
    "GenerationResult": "engines.base",
    "JobContext": "engines.base",
    "EngineError": "errors",
    "RetryableEngineError": "errors",
    "TaskCanceled": "errors",
}


def _load(name: str) -> object:
    """`ref2video.<name>` on its first look-up (PEP 562's module `__getattr__`)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


if not _typing.TYPE_CHECKING:  # type checkers see the imports above instead, so a misspelt name stays an error
    __getattr__ = _load


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
