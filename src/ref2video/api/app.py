"""`create_app(settings)`: the HTTP API over one `Service`, with its workers in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..version import __version__
from ..config import Settings
from ..service import Service
from .errors import install_error_handlers
from .guard import RequestGuard
from .metrics import RequestMetrics
from .openapi import BEARER
from .routes import admin, docs, health, metrics, results, tasks, uploads, web
from .schemas import CreateBody

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    """The ASGI app. Pass a `service` to share one (tests, the CLI); else one is built from
    `settings` as the app starts (building migrates the database), before any request."""
    settings = service.settings if service is not None else settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = service if service is not None else await to_thread.run_sync(Service, settings)
        app.state.service = running
        await to_thread.run_sync(running.start)
        try:
            async with tasks.serving(app):
                yield
        finally:
            await to_thread.run_sync(running.stop)

    app = FastAPI(
        title="ref2video",
        version=__version__,
        summary="Reference-to-video tasks, wire-compatible with DashScope wan2.6-r2v.",
        lifespan=lifespan,
        docs_url=None,  # served offline by routes/docs.py: FastAPI's pages load from a CDN
        redoc_url=None,
        # Observability is Prometheus and logs (docs/observability.md). FastAPI's own
        # OpenTelemetry hooks would otherwise look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if service is not None:
        app.state.service = service
    install_error_handlers(app)
    app.add_middleware(RequestGuard)
    app.add_middleware(RequestMetrics, log_lines=settings.log_requests)  # outermost: it sees the guard's answers too
    # The task routes are the hot path. FastAPI keeps an included router as one nested route
    # that is matched on every request; the task routes added as they are cost about 50 µs
    # less a request (docs/benchmarks.md). The rest are included as usual (the admin prefix).
    app.router.routes.extend(tasks.router.routes)
    for module in (uploads, results, health, metrics, admin, web, docs):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, plus the create body that routes parse themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        body = CreateBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(body.pop("$defs", {}))
        components["schemas"]["CreateBody"] = body
        components["securitySchemes"] = BEARER
        # Validation errors are answered 400 in the provider's envelope (errors.py), never 422.
        for operation in (op for ops in schema["paths"].values() for op in ops.values()):
            operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
