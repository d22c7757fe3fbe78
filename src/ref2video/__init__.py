"""ref2video: a self-hostable reference-to-video task service, wire-compatible with DashScope."""

from .version import __version__
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
