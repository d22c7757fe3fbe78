"""The task protocol: gateway and native create, query, cancel and list (docs/protocol.md §1-6)."""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from ...app import idempotency, tasks, webhooks
from ...errors import AccessDenied, InvalidParameter, UnsupportedOperation, clip
from ...protocol import Status
from ...service import Service
from ...spec import parse_spec
from ..deps import base_url_of, bearer_key, in_thread, principal_of, read_json, service_of, text_param
from ..errors import request_id
from ..throttle import CREATE, QUERY, admit
from ..openapi import GATEWAY_CREATE, LIST_PARAMETERS, NATIVE_CREATE, SECURITY, errors
from ..schemas import CancelAnswer, TaskAnswer, TaskCreated, TaskList
from ..views import list_item, task_output, unknown_output

__all__ = ["router", "serving"]


class _DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` (and `str` path parameters), reads what it
    needs itself and returns a `Response`. FastAPI's per-request work for it (solving
    dependencies, looking for a body, checking the answer) would find nothing to do and still
    cost a good part of a poll, so the endpoint is called directly. The declaration, and so the
    OpenAPI document, is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.dependant
        extra = d.query_params or d.header_params or d.cookie_params or d.body_params or d.dependencies
        if extra or any(p.field_info.annotation is not str for p in d.path_params):
            raise TypeError(f"{self.path}: a direct route takes the Request and str path parameters only")

    def get_route_handler(self) -> Any:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request, **request.path_params)  # type: ignore[no-any-return]

        return handler


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[None]:
    """Entered inside the app's own lifespan (its service is built; api/app.py). While the app serves, what exists
    at its start is out of the garbage collector's sight (`gc.freeze`): a full collection then
    looks at what requests made, not at every module, model and table object too, which took
    100 to 300 ms at a time under load, every few seconds. On the way out the event loop's
    PostgreSQL pool is closed, and the collector sees everything again."""
    gc.freeze()
    try:
        yield
    finally:
        service = getattr(app.state, "service", None)
        try:
            if service is not None:
                await tasks.release(service.db)
        finally:
            gc.unfreeze()


router = APIRouter(route_class=_DirectRoute)

_MAX_TASK_ID = 64
_MAX_ECHO = 1000  # an UNKNOWN answer repeats the id asked for, up to this


def _ok(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"request_id": request_id(), **body}, headers=headers)


def _plausible(task_id: str) -> bool:
    """Could be one of our ids (printable ASCII, not too long); anything else is UNKNOWN
    without asking the database, which could not even store a NUL."""
    return len(task_id) <= _MAX_TASK_ID and task_id.isascii() and task_id.isprintable()


async def _create(request: Request) -> JSONResponse:
    service = service_of(request)
    bearer_key(request)  # a missing key is the first thing to report, then the body
    body = await read_json(request, service.settings.max_body_bytes)
    principal = await principal_of(request)
    await admit(request, principal, CREATE)
    spec = parse_spec(body, service.models, upstream=service.relayed_as)
    callback = webhooks.callback_of(request.headers.get(webhooks.CALLBACK_HEADER))
    claim = idempotency.claim_of(request.headers.get(idempotency.HEADER), body)
    task = await service.submit(spec, principal, callback_url=callback, idempotency=claim)
    replayed = {"Idempotent-Replayed": "true"} if claim is not None and claim.replayed else None
    return _ok({"output": {"task_id": task.id, "task_status": task.status.value}}, replayed)


@router.post(
    "/task/bailian/ref2video", tags=["gateway"], summary="Create a task (gateway form)",
    response_model=TaskCreated, responses=errors(400, 401, 404, 413, 429), openapi_extra=GATEWAY_CREATE,
)
async def create_gateway(request: Request) -> JSONResponse:
    return await _create(request)


@router.post(
    "/api/v1/services/aigc/video-generation/video-synthesis", tags=["native"],
    summary="Create a task (needs X-DashScope-Async: enable)",
    response_model=TaskCreated, responses=errors(400, 401, 403, 404, 413, 429), openapi_extra=NATIVE_CREATE,
)
async def create_native(request: Request) -> JSONResponse:
    if request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
        bearer_key(request)  # a missing key is still the first thing to report
        raise AccessDenied()
    return await _create(request)


async def _query(request: Request, task_id: str) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    await admit(request, principal, QUERY)
    if not _plausible(task_id):
        return _ok(unknown_output(task_id[:_MAX_ECHO]))
    task = await tasks.get(service.db, principal, task_id, retention_ms=service.retention_ms)
    if task is None:
        return _ok(unknown_output(task_id))
    return _ok(task_output(task, tz=service.tz, signer=service.signer, base_url=lambda: base_url_of(request)))


@router.get("/task/{task_id}", tags=["gateway"], summary="Query a task (gateway form)",
            response_model=TaskAnswer, responses=errors(401, 429), openapi_extra={"security": SECURITY})
async def query_gateway(request: Request, task_id: str) -> JSONResponse:
    return await _query(request, task_id)


@router.get("/api/v1/tasks/{task_id}", tags=["native"], summary="Query a task",
            response_model=TaskAnswer, responses=errors(401, 429), openapi_extra={"security": SECURITY})
async def query_native(request: Request, task_id: str) -> JSONResponse:
    return await _query(request, task_id)


@router.post("/api/v1/tasks/{task_id}/cancel", tags=["native"],
             summary="Cancel a PENDING task (or ask a RUNNING one to stop)",
             response_model=CancelAnswer, responses=errors(400, 401, 429), openapi_extra={"security": SECURITY})
async def cancel(request: Request, task_id: str) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    await admit(request, principal, QUERY)
    done = None
    if _plausible(task_id):
        done = await in_thread(lambda: tasks.cancel(service.db, principal, task_id, write_lock=service.write_lock))
    if done is None:
        raise UnsupportedOperation()
    return _ok({})


@router.get("/api/v1/tasks", tags=["native"], summary="List your tasks, newest first",
            response_model=TaskList, responses=errors(400, 401, 429),
            openapi_extra={**LIST_PARAMETERS, "security": SECURITY})
async def list_tasks(request: Request) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    await admit(request, principal, QUERY)
    q = request.query_params
    page_no = _int_param(q.get("page_no"), "page_no", 1, 1, 1_000_000)
    page_size = _int_param(q.get("page_size"), "page_size", 10, 1, 100)
    statuses = _statuses(q.get("status"))
    start_ms = _time_param(q.get("start_time"), "start_time", service)
    end_ms = _time_param(q.get("end_time"), "end_time", service)
    model = text_param(request, "model_name") or None
    # A ref2video extension (docs/protocol.md §6); a prefix no id of ours can start with matches nothing.
    prefix = text_param(request, "task_id_prefix") or None
    if prefix is not None and not _plausible(prefix):
        page = tasks.TaskPage(items=[], total=0)
    else:
        page = await in_thread(
            lambda: tasks.page(service.db, principal, retention_ms=service.retention_ms, page_no=page_no,
                               page_size=page_size, status=statuses, start_ms=start_ms, end_ms=end_ms, model=model,
                               id_prefix=prefix)
        )
    return _ok({
        "data": [list_item(t) for t in page.items],
        "total": page.total,
        "total_page": math.ceil(page.total / page_size),
        "page_no": page_no,
        "page_size": page_size,
    })


def _int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    digits = raw.strip()
    # ASCII digits only (isdigit() takes "²"), and few enough that int() takes them.
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9) or not low <= int(digits) <= high:
        raise InvalidParameter(f"{name} must be an integer from {low} to {high}, not {clip(raw)}")
    return int(digits)


def _time_param(raw: str | None, name: str, service: Service) -> int | None:
    if not raw:
        return None
    try:
        if not (raw.isascii() and raw.isdigit() and len(raw) == 14):
            raise ValueError(raw)
        moment = datetime.strptime(raw, "%Y%m%d%H%M%S").replace(tzinfo=service.tz)
    except ValueError:
        raise InvalidParameter(f"{name} must be YYYYMMDDhhmmss, not {clip(raw)}") from None
    return int(moment.timestamp() * 1000)


def _statuses(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    names = [s.strip().upper() for s in raw.split(",") if s.strip()]
    allowed = {s.value for s in Status} - {Status.UNKNOWN.value}
    for name in names:
        if name not in allowed:
            raise InvalidParameter(f"status must be one of {', '.join(sorted(allowed))}, not {clip(name)}")
    return names

