"""Every error the client raises, in one tree.

    ClientError                  base of everything below; also bad arguments and configuration
    ├── APIError                 the server answered an error envelope {"request_id", "code", "message"}
    │   ├── InvalidRequest       400, 413  a field breaks a rule, an unsupported operation
    │   ├── AuthenticationError  401       missing, unknown or revoked API key
    │   ├── NotFound             404       a model or route the server does not have
    │   ├── RateLimited          429       rate or quota limit (after retries); `.retry_after`
    │   └── ServerError          5xx       the server failed (503 after retries)
    ├── TransportError           the server could not be reached (after retries); wraps httpx
    ├── TaskFailed               a task ended FAILED, CANCELED or UNKNOWN; `.task`
    ├── WaitTimeout              a task was not done when the wait's timeout passed; `.task`
    ├── TaskNotFound             `resolve()`: no task id starts with the prefix; `.prefix`
    └── AmbiguousTaskId          `resolve()`: several do; `.prefix`, `.candidates`, `.count`

Other statuses (403 AccessDenied, 405) raise a plain `APIError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._models import Task

__all__ = [
    "ClientError",
    "APIError",
    "InvalidRequest",
    "AuthenticationError",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TransportError",
    "TaskFailed",
    "WaitTimeout",
    "TaskNotFound",
    "AmbiguousTaskId",
    "error_for_response",
]


class ClientError(Exception):
    """Base of every error the ref2video client raises."""


class APIError(ClientError):
    """The server refused or failed a request and said why in the provider's envelope.

    `str(error)` is one line: `InvalidParameter: parameters.size '7*7' is not supported (request 1f0c...)`.
    """

    def __init__(self, code: str, message: str, *, request_id: str | None = None,
                 status_code: int, response: httpx.Response | None = None) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status_code = status_code
        self.response = response
        super().__init__(self._line())

    def _line(self) -> str:
        line = f"{self.code}: {self.message}" if self.message else self.code
        return f"{line} (request {self.request_id})" if self.request_id else f"{line} (HTTP {self.status_code})"


class InvalidRequest(APIError):
    """HTTP 400 or 413: the request breaks a rule; `message` names the field."""


class AuthenticationError(APIError):
    """HTTP 401: the API key is missing, unknown or revoked."""


class NotFound(APIError):
    """HTTP 404: a model this server does not serve, or a route it does not have."""


class RateLimited(APIError):
    """HTTP 429, still so after the retries; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None, status_code: int = 429,
                 response: httpx.Response | None = None, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(code, message, request_id=request_id, status_code=status_code, response=response)


class ServerError(APIError):
    """HTTP 5xx: the server failed (a 503 only after the retries)."""


class TransportError(ClientError):
    """The server could not be reached or the connection broke; `__cause__` is the httpx error."""


class TaskFailed(ClientError):
    """A task ended without a video (FAILED, CANCELED or UNKNOWN); `task` is its final state."""

    def __init__(self, task: Task, message: str | None = None) -> None:
        self.task = task
        super().__init__(message or _failure_line(task))


class WaitTimeout(ClientError):
    """The task was not done when the wait's timeout passed; `task` is the last state seen."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        progress = f", {task.progress}%" if task.progress is not None else ""
        super().__init__(f"task {task.id} is still {task.status}{progress} after {timeout:g} s")


class TaskNotFound(ClientError):
    """No task of this key has an id that starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        super().__init__(f"no task id starts with {prefix!r} (among this key's tasks that have not expired)")


class AmbiguousTaskId(ClientError):
    """Several tasks' ids start with `prefix`; `candidates` names some of them, `count` says how many."""

    def __init__(self, prefix: str, candidates: list[str], count: int) -> None:
        self.prefix = prefix
        self.candidates = candidates
        self.count = count
        more = ", ..." if count > len(candidates) else ""
        super().__init__(f"{count} task ids start with {prefix!r}: {', '.join(candidates)}{more}; "
                         "give more of the id")


def _failure_line(task: Task) -> str:
    line = f"task {task.id} ended {task.status}"
    if task.code:
        line += f": {task.code}: {task.message}" if task.message else f": {task.code}"
    return line


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest, 413: InvalidRequest, 401: AuthenticationError, 404: NotFound,
}


def error_for_response(response: httpx.Response, retry_after: float | None = None) -> APIError:
    """The typed error for an error answer; the body need not be the provider's envelope."""
    code, message, request_id = _envelope(response)
    status = response.status_code
    if status == 429:
        return RateLimited(code, message, request_id=request_id, response=response, retry_after=retry_after)
    cls = ServerError if status >= 500 else _BY_STATUS.get(status, APIError)
    return cls(code, message, request_id=request_id, status_code=status, response=response)


def _envelope(response: httpx.Response) -> tuple[str, str, str | None]:
    """(code, message, request_id) from `{"request_id", "code", "message"}`, or from the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        request_id = body.get("request_id")
        return body["code"], str(body.get("message") or ""), request_id if isinstance(request_id, str) else None
    text = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code}", text or response.reason_phrase, None
