"""The typed Python SDK for ref2video (and DashScope-compatible) task servers.

```python
from ref2video.client import Client

with Client("http://127.0.0.1:8000", "r2v-...") as client:
    task = client.generate("character1 waves", ["hero.png"], "out.mp4", size="1280*720")
```

`Client` and `AsyncClient` mirror each other; every error is a `ClientError`.
"""

from ._client import AsyncClient, Client
from ._errors import (
    AmbiguousTaskId,
    APIError,
    AuthenticationError,
    ClientError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TaskFailed,
    TaskNotFound,
    TransportError,
    WaitTimeout,
)
from ._headers import retry_after
from ._models import Task, TaskPage, TaskSummary, Usage

__all__ = [
    "Client",
    "AsyncClient",
    "Task",
    "Usage",
    "TaskPage",
    "TaskSummary",
    "ClientError",
    "APIError",
    "AuthenticationError",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TransportError",
    "TaskFailed",
    "WaitTimeout",
    "TaskNotFound",
    "AmbiguousTaskId",
    "retry_after",
]
