"""The web page's static files (index.html, app.css, app.js), served by `ref2video.api.routes.web`,
and docs.js, which starts Swagger UI on /docs (`ref2video.api.routes.docs`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent
