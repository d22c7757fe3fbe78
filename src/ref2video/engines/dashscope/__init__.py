"""The `dashscope` engine: relays tasks to the provider's own task API (a held engine, see
`engines/base.py`). `engine` runs it; `provider` speaks the provider's protocol; `limiter` keeps
to its rate limits, which `sharing` splits between the processes on one database; `poller`
follows tasks within them; `reconcile` finds submits whose answer was lost."""

from .engine import DashscopeEngine
from .errors import ProviderError, ProviderTransient
from .limiter import PollSchedule, RateLimiter, Turn
from .provider import ProviderClient, UpstreamSummary, UpstreamTask

__all__ = [
    "DashscopeEngine",
    "ProviderClient",
    "UpstreamTask",
    "UpstreamSummary",
    "ProviderError",
    "ProviderTransient",
    "RateLimiter",
    "Turn",
    "PollSchedule",
]
