"""The web page: `/` and its static assets under `/web/<file>`, kept out of the API schema.

The page is plain HTML, CSS and JavaScript (no build step); it calls the API of the same origin
with the key the user pastes. A strict Content-Security-Policy keeps that key out of reach of
anything but the page's own script.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import FileResponse

from ...errors import NotFound
from ...web import WEB_DIR

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# References may be shown from any http(s) address; results may live on a configured public_url.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data: http: https:; media-src 'self' blob: http: https:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


@router.head("/", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    headers = {**_HEADERS, "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"}
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers)


@router.head("/web/{name}", include_in_schema=False)
@router.get("/web/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no web asset named {name[:100]!r}")
    return FileResponse(WEB_DIR / name, media_type=media_type, headers=_HEADERS)
