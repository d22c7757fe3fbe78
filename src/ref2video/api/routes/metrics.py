"""`/metrics`: the Prometheus scrape of this process (of every process sharing
`PROMETHEUS_MULTIPROC_DIR`, in multiprocess mode) and of the task table. docs/observability.md."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ... import metrics
from ..deps import in_thread, service_of

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)",
            response_class=Response, include_in_schema=False)
async def scrape(request: Request) -> Response:
    service = service_of(request)
    body = await in_thread(metrics.exposition, service.gauges)
    return Response(body, media_type=metrics.CONTENT_TYPE)
