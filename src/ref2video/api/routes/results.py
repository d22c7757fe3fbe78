"""Finished videos behind signed, expiring URLs; no key needed, the signature is the key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...errors import AccessDenied
from ..deps import in_thread, service_of
from ..openapi import RANGE_PAST_END, VIDEO, VIDEO_PART, errors

__all__ = ["router"]

router = APIRouter()


@router.head("/v1/results/{key}", include_in_schema=False)
@router.get("/v1/results/{key}", tags=["results"], summary="Download a result (supports Range)",
            response_class=Response,
            responses={200: VIDEO, 206: VIDEO_PART, 416: RANGE_PAST_END, **errors(403, 404)})
async def result(request: Request, key: str, expires: str = "", sig: str = "") -> Response:
    service = service_of(request)
    if not service.signer.verify(key, expires, sig):
        raise AccessDenied("the link is invalid or has expired; query the task for a fresh video_url")
    return await in_thread(service.storage.response, key, request)  # a bucket's answer blocks
