"""The HTTP API: `create_app(settings)` builds it."""

from .app import create_app

__all__ = ["create_app"]
