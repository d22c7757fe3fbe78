"""Every error answered in the provider's flat envelope `{"request_id", "code", "message"}`."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..logs import REQUEST_ID
from ..errors import ApiError, InvalidParameter, MethodNotAllowed, NotFound, ServiceUnavailable, Throttled

__all__ = ["install_error_handlers", "error_response", "request_id", "REQUEST_ID"]

# Set by RequestGuard (guard.py) for the request being answered; every log line names it (logs.py).


def request_id() -> str:
    """The id of the request being answered (a fresh one outside any request)."""
    return REQUEST_ID.get() or str(uuid.uuid4())

# Starlette's own errors (unknown route, wrong method), in our vocabulary.
_HTTP_STATUS = {404: NotFound, 405: MethodNotAllowed}


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"request_id": request_id(), "code": error.code, "message": error.message}
    if isinstance(error, ServiceUnavailable):
        headers = {"Retry-After": str(error.retry_after), **(headers or {})}
    elif isinstance(error, Throttled):
        headers = {"Retry-After": str(error.retry_after), **error.headers, **(headers or {})}
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        error_cls = _HTTP_STATUS.get(exc.status_code)
        error = error_cls() if error_cls else InvalidParameter(str(exc.detail))
        if not error_cls:
            error.status_code = exc.status_code
        return error_response(error, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(InvalidParameter(f"{field}: {first.get('msg', 'invalid value')}"))
    # Anything else is RequestGuard's (guard.py): one answer, one traceback, the connection kept.
