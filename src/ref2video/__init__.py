"""ref2video: a self-hostable reference-to-video task service, wire-compatible with DashScope."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Settings  # noqa: E402
from .engines.base import Engine, GenerationRequest, GenerationResult, JobContext  # noqa: E402
from .errors import EngineError, RetryableEngineError, TaskCanceled  # noqa: E402
from .protocol import Status  # noqa: E402
from .spec import TaskSpec  # noqa: E402

__all__ = [
    "__version__",
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
