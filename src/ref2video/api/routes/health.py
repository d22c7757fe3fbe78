"""Health: whether this process can do its work, that is reach its database and write to it."""

from __future__ import annotations

import os
import socket

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ...app.health import probe
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
