"""The web page's static files (index.html, app.css, app.js), served by `ref2video.api.routes.web`."""

from __future__ import annotations

from pathlib import Path

__all__ = ["WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent
