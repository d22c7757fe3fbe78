"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse

from ..deps import in_thread, service_of

__all__ = ["router"]

router = APIRouter()


@router.get("/health", tags=["health"], summary="Is the service up, and can it reach its database?")
async def health(request: Request) -> JSONResponse:
    service = service_of(request)

    def check() -> None:
        with service.db.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await in_thread(check)
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "workers": service.settings.workers, "running": service.pool.running})
