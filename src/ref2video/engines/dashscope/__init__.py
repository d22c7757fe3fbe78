"""The provider side of the `dashscope` relay: its protocol client, errors and poll pacing."""

from .errors import ProviderError, ProviderTransient
from .limiter import PollSchedule, RateLimiter, Turn
from .provider import ProviderClient, UpstreamSummary, UpstreamTask

__all__ = [
    "ProviderClient",
    "UpstreamTask",
    "UpstreamSummary",
    "ProviderError",
    "ProviderTransient",
    "RateLimiter",
    "Turn",
    "PollSchedule",
]
