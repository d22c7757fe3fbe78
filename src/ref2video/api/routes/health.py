"""Health: whether this process can do its work, that is reach its database and write to it.

`/health` (the first of these, kept as it was), `/health/live` (the process answers: no I/O, for
a liveness probe that restarts a stuck process) and `/health/ready` (the database answers and
takes a write, the result and upload storages take a file: for a readiness probe that takes a
process out of a load balancer while it cannot serve)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from ...app.health import probe, probe_storage
from ..deps import in_thread, service_of
from ..schemas import Health, Unhealthy

__all__ = ["router"]

router = APIRouter()

# The row this process rewrites on every check (one per process, so none waits on another).
_PROBE = f"{socket.gethostname()}:{os.getpid()}"[:128]


@router.get("/health", tags=["health"], summary="Is the service up, and can it read and write its database?",
            response_model=Health, responses={503: {"model": Unhealthy, "description": "the database is away"}})
async def health(request: Request) -> JSONResponse:
    service = service_of(request)
    problem = await in_thread(probe, service.db, _PROBE)
    if problem is not None:  # "unreachable", or "not writable" (a full disk, a read-only file)
        return JSONResponse({"status": "unavailable", "database": problem}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", "database": "ok", "workers": service.settings.workers,
                         "running": service.running})


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str = Field(description='"ok", "unreachable" or "not writable"')
    storage: str = Field(description='"ok", or what failed when a probe object was put and removed')
    uploads: str = Field(description="the same for the uploads storage")


@router.get("/health/live", tags=["health"], summary="Is the process up? (no I/O: for a liveness probe)",
            response_model=Live)
async def live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/health/ready", tags=["health"],
            summary="Can it serve? The database answers and takes a write, and both storages take a file",
            response_model=Ready, responses={503: {"model": Ready, "description": "something is away"}})
async def ready(request: Request) -> JSONResponse:
    service = service_of(request)
    database = await in_thread(probe, service.db, _PROBE)
    storage = await in_thread(probe_storage, service.storage)
    uploads = await in_thread(probe_storage, service.uploads)
    body = {"database": database or "ok", "storage": storage or "ok", "uploads": uploads or "ok"}
    if database or storage or uploads:
        return JSONResponse({"status": "unavailable", **body}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", **body})
