"""Every error ref2video raises on purpose, in one tree.

    Ref2VideoError
    ├── ApiError                 answered to a client in the provider's envelope
    │   ├── InvalidParameter     400  a field breaks a rule of docs/protocol.md §2-3
    │   ├── InvalidURL           400  a reference is not http(s):// or a known oss:// key
    │   ├── RequestTooLarge      413  the body is over the configured limit
    │   ├── InvalidApiKey        401  missing, unknown or revoked key
    │   ├── AccessDenied         403  native create without X-DashScope-Async: enable
    │   ├── ModelNotFound        404  a model this server does not route to an engine
    │   ├── NotFound             404  no such route or resource
    │   ├── MethodNotAllowed     405
    │   ├── UnsupportedOperation 400  cancel of a task that is not PENDING or RUNNING
    │   ├── Arrearage            400  the balance or a spend limit cannot cover the task (billing)
    │   ├── Throttled            429  a rate or quota limit (Throttling.RateQuota); Retry-After
    │   ├── ServiceUnavailable   503  the database (or another part) is away for now; Retry-After
    │   └── InternalError        500  never for bad input
    └── EngineError              raised by an engine; fails the task with its code and message
        ├── RetryableEngineError the attempt is given back to the queue (attempt + 1)
        ├── TaskCanceled         the engine stopped because a cancel was requested
        └── MediaError           a reference could not be fetched or breaks a rule
                                 (code InvalidURL or InvalidParameter; see ref2video.media)
"""

from __future__ import annotations

__all__ = [
    "clip",
    "Ref2VideoError",
    "ApiError",
    "InvalidParameter",
    "InvalidURL",
    "Arrearage",
    "Throttled",
    "RequestTooLarge",
    "InvalidApiKey",
    "AccessDenied",
    "ModelNotFound",
    "NotFound",
    "MethodNotAllowed",
    "UnsupportedOperation",
    "ServiceUnavailable",
    "InternalError",
    "EngineError",
    "RetryableEngineError",
    "TaskCanceled",
    "MediaError",
]


def clip(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters: messages name what was sent, but never
    echo a huge parameter back whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


class Ref2VideoError(Exception):
    """Base of every error ref2video raises on purpose."""


class ApiError(Ref2VideoError):
    """An error answered to the client as `{"request_id", "code", "message"}`."""

    status_code = 500
    code = "InternalError"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        super().__init__(self.message)


class InvalidParameter(ApiError):
    """The request is invalid."""

    status_code, code = 400, "InvalidParameter"


class InvalidURL(ApiError):
    """A reference URL is invalid."""

    status_code, code = 400, "InvalidURL"


class RequestTooLarge(ApiError):
    """The request body is too large."""

    status_code, code = 413, "RequestTooLarge"


class InvalidApiKey(ApiError):
    """Invalid API-key provided."""

    status_code, code = 401, "InvalidApiKey"


class AccessDenied(ApiError):
    """current user api does not support synchronous calls"""

    status_code, code = 403, "AccessDenied"


class ModelNotFound(ApiError):
    """Model not exist."""

    status_code, code = 404, "ModelNotFound"


class NotFound(ApiError):
    """Not found."""

    status_code, code = 404, "NotFound"


class MethodNotAllowed(ApiError):
    """Method not allowed."""

    status_code, code = 405, "MethodNotAllowed"


class UnsupportedOperation(ApiError):
    """Failed to cancel the task, please confirm if the task exists or its status is PENDING."""

    status_code, code = 400, "UnsupportedOperation"


class Arrearage(ApiError):
    """Access denied, please make sure your account is in good standing."""

    status_code, code = 400, "Arrearage"

    def __init__(self, reason: str | None = None) -> None:
        # The provider's own words first, so clients that match on them keep working.
        super().__init__(f"{(self.__doc__ or '').strip()} ({reason})" if reason else None)


class Throttled(ApiError):
    """Requests rate limit exceeded, please try again later."""

    status_code, code = 429, "Throttling.RateQuota"

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))
        self.headers = headers or {}


class ServiceUnavailable(ApiError):
    """The service is temporarily unavailable, please try again later."""

    status_code, code = 503, "ServiceUnavailable"
    retry_after = 2  # seconds; clients that honour Retry-After come back then


class InternalError(ApiError):
    """An internal error has occurred, please try again later."""

    status_code, code = 500, "InternalError"


class EngineError(Ref2VideoError):
    """An engine could not make the video; the task fails with `code` and `message`."""

    def __init__(self, message: str, code: str = "InternalError") -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class RetryableEngineError(EngineError):
    """A passing failure: the task goes back to the queue for another attempt."""

    def __init__(self, message: str, code: str = "InternalError", delay: float = 0.0) -> None:
        super().__init__(message, code)
        self.delay = delay


class TaskCanceled(EngineError):
    """The task was canceled while it ran."""

    def __init__(self, message: str = "the task was canceled") -> None:
        super().__init__(message, code="Canceled")


class MediaError(EngineError):
    """A reference could not be fetched, or its bytes break a rule of docs/protocol.md §2 or §3.

    `code` is `InvalidURL` when the address cannot be used (scheme, forbidden address, DNS,
    HTTP status, redirects) and `InvalidParameter` when the content is wrong (size, format,
    pixels, seconds, a broken file).
    """

    def __init__(self, message: str, code: str = "InvalidParameter") -> None:
        super().__init__(message, code)
