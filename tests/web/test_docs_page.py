"""`/docs` renders without internet: Swagger UI comes from the package, not from a CDN.

Chromium here cannot reach the internet anyway; every request that is not to the loopback server
is also aborted and recorded, and the test asserts there was none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.live import LiveServer
from tests.web.conftest import TIMEOUT_MS


def test_docs_assets_are_served_with_a_csp(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "default-src 'none'" in csp
        assert "https://" not in page.text and "http://" not in page.text
        for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css"),
                           ("docs.js", "text/javascript"), ("favicon.png", "image/png")):
            r = client.get(f"/docs/assets/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert client.get("/docs/assets/nope.js").json()["code"] == "NotFound"
        assert client.get("/redoc").status_code == 404  # off: ReDoc's bundle loads its logo from a CDN
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        # The web page's own, stricter policy is untouched.
        assert "style-src 'self';" in client.get("/").headers["content-security-policy"]


def test_docs_render_offline_in_chromium(server: LiveServer, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []
    violations: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: violations.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    try:
        page.goto(f"{server.url}/docs")
        expect(page.get_by_text("/task/bailian/ref2video", exact=True)).to_be_visible()
        expect(page.get_by_text("/api/v1/tasks/{task_id}", exact=True)).to_be_visible()
        assert page.locator(".opblock").count() >= 8
        # An operation opens, with its parameters: the UI works, not only its first paint.
        page.get_by_text("/api/v1/tasks/{task_id}", exact=True).click()
        expect(page.locator(".opblock.is-open table.parameters")).to_contain_text("task_id")
        page.screenshot(path=str(tmp_path / "docs.png"))
        assert outside == [], f"the docs page reached for the internet: {outside}"
        assert violations == [] and errors == []
    finally:
        context.close()
