"""The API documentation at `/docs` (Swagger UI), served without internet.

FastAPI's own page loads Swagger UI from a CDN, so on a machine without internet it is blank.
Here Swagger UI comes from the `fastapi-offline` package (Swagger UI 5: 4.x cannot render
FastAPI's OpenAPI 3.1 document), under `/docs/assets/<file>`. The page is a few lines of HTML
whose only script of its own is `docs.js`, never an inline one, so its CSP keeps
`script-src 'self'`; Swagger UI sets inline styles and shows data: images, which this page's
CSP allows (the web page at `/` keeps its stricter one). ReDoc is off: its bundle fetches its
logo from a CDN.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse

from ...errors import NotFound
from ...web import WEB_DIR

__all__ = ["ASSETS", "router"]

router = APIRouter(include_in_schema=False)

_VENDOR = Path(str(files("fastapi_offline") / "static"))
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_VENDOR / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": (_VENDOR / "swagger-ui.css", "text/css; charset=utf-8"),
    "favicon.png": (_VENDOR / "favicon.png", "image/png"),
    "docs.js": (WEB_DIR / "docs.js", "text/javascript; charset=utf-8"),
}
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidated by ETag: an upgraded package changes the files
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – API documentation</title>
<link rel="icon" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<script src="{assets}/swagger-ui-bundle.js" defer></script>
<script src="{assets}/docs.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec}"></div>
</body>
</html>
"""


@router.head("/docs", include_in_schema=False)
@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
    html = _PAGE.format(title=escape(request.app.title), assets=escape(f"{root}/docs/assets"),
                        spec=escape(f"{root}{request.app.openapi_url}"))
    return HTMLResponse(html, headers={**_HEADERS, "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"})


@router.head("/docs/assets/{name}", include_in_schema=False)
@router.get("/docs/assets/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    found = ASSETS.get(name)
    if found is None:
        raise NotFound(f"no documentation asset named {name[:100]!r}")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
