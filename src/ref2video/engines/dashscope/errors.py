"""What the provider client raises, as engine errors, so a relay engine can let them through.

    EngineError                      (ref2video.errors)
    ├── ProviderError                the provider refused for good: 4xx other than 408 and 429,
    │                                with its envelope `code` and `message` and the HTTP `status`
    └── RetryableEngineError
        └── ProviderTransient        429 (with Retry-After), 408, 5xx, timeouts, connection
                                     errors, broken or non-JSON bodies: worth another try later

A `ProviderTransient` raised by a request that changes something (a submit) says whether the
provider may have acted on it anyway (`uncertain`): an answer lost on the way back is not a
request that never arrived, and a submit must then be reconciled before it is sent again.
"""

from __future__ import annotations

from ...errors import EngineError, RetryableEngineError

__all__ = ["ProviderError", "ProviderTransient"]


class ProviderError(EngineError):
    """The provider refused the request; sending it again will not help.

    ```python
    try:
        await provider.submit(body, oss=False)
    except ProviderError as exc:
        fail_task(exc.code, exc.message)      # e.g. InvalidParameter, InvalidApiKey
    ```
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message, code)
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, status={self.status})"


class ProviderTransient(RetryableEngineError):
    """A passing failure: throttled, the provider failed, or its answer was lost or broken.

    `retry_after` is the provider's Retry-After in seconds (None when it gave none) and is also
    the `delay` the queue waits before the next attempt. `uncertain` is True when the request
    may have reached the provider and been acted on (see the module docstring).

    ```python
    try:
        task = await provider.get(task_id)
    except ProviderTransient as exc:
        schedule.failed(task_id, time.monotonic(), retry_after=exc.retry_after)
    ```
    """

    def __init__(self, code: str, message: str, retry_after: float | None = None, *,
                 status: int | None = None, uncertain: bool = False) -> None:
        super().__init__(message, code, delay=retry_after or 0.0)
        self.retry_after = retry_after
        self.status = status
        self.uncertain = uncertain

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.code!r}, {self.message!r}, retry_after={self.retry_after}, "
                f"status={self.status}, uncertain={self.uncertain})")
