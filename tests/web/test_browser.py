"""The web page at `/`, driven in real headless Chromium (Debian's) through Playwright
(fixtures in conftest.py). `R2V_UPDATE_SCREENSHOTS=1` rewrites docs/images/web-ui.png.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from tests.live import ROOT, LiveServer, ref_url
from tests.web.conftest import TIMEOUT_MS

SCREENSHOT = ROOT / "docs" / "images" / "web-ui.png"


def _open_with_key(page: Any, server: LiveServer, key: str) -> None:
    page.goto(f"{server.url}/")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Save key").click()


def _png(path: Path) -> Path:
    image = Image.new("RGB", (320, 240), (38, 92, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((110, 40, 210, 140), fill=(250, 214, 165))
    draw.rectangle((120, 140, 200, 230), fill=(220, 60, 60))
    draw.rectangle((0, 200, 320, 240), fill=(60, 140, 70))
    image.save(path, "PNG")
    return path


def test_page_and_assets_are_served(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            r = client.get(f"/web/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        missing = client.get("/web/nope.js")
        assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
        assert client.get("/web/..%2Fapp.py").status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/web/") for p in paths)


def test_upload_create_and_play(make_server: Callable[..., LiveServer], page_for: Callable[..., Any],
                                tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = make_server()
    page = page_for(1280, 1500)
    _open_with_key(page, server, server.key)
    expect(page.locator("#key-state")).to_contain_text("is saved in this browser")
    expect(page.locator("#tasks-empty")).to_have_text("No tasks yet.")

    page.get_by_label("Prompt", exact=True).fill("character1 waves at the camera steps=10 step_ms=100")
    page.get_by_label("Duration (seconds)").fill("3")
    page.locator("#file-input").set_input_files(str(_png(tmp_path / "hero.png")))
    ref = page.locator("#refs li").first
    expect(ref.locator(".name")).to_have_text("character1")
    expect(ref.locator(".state")).to_have_text("Uploaded")
    thumb = ref.get_by_role("img", name="character1 preview")
    expect(thumb).to_be_visible()
    assert thumb.evaluate("img => img.naturalWidth") == 320

    page.get_by_role("button", name="Create video").click()
    task = page.locator("#tasks li").first
    expect(task.locator("progress")).to_be_attached()
    expect(task.locator(".badge")).to_have_text("SUCCEEDED", timeout=30_000)
    expect(page.locator("#error")).to_be_empty()
    task_id = task.get_attribute("data-task-id")
    body = server.get(task_id)
    assert body["output"]["task_status"] == "SUCCEEDED"
    assert body["output"]["orig_prompt"].startswith("character1 waves")

    page.wait_for_function(
        "() => { const v = document.querySelector('#player');"
        " return v && v.readyState >= 1 && v.duration > 0; }",
        timeout=TIMEOUT_MS,
    )
    src = page.locator("#player").get_attribute("src") or ""
    assert src.split("?")[0] == body["output"]["video_url"].split("?")[0]
    href = page.get_by_role("link", name="Download MP4").get_attribute("href")
    assert href and "/v1/results/" in href
    assert httpx.get(href).status_code == 200

    # The page from its top, once Chromium's player has hidden its loading spinner (about 1 s).
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(1500)
    shot = tmp_path / "web-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("R2V_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert page.errors == []


def test_bad_key_shows_the_envelope(server: LiveServer, page_for: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = page_for()
    _open_with_key(page, server, "r2v-000000000000-not-a-real-secret")
    expect(page.locator("#error")).to_contain_text("InvalidApiKey: Invalid API-key provided.")
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#key-state")).to_contain_text("No key saved")
    assert page.evaluate("() => localStorage.getItem('ref2video.apiKey')") is None
    assert page.errors == []


def test_failed_and_canceled_tasks(server: LiveServer, page_for: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    failed_id = server.create(prompt="character1 fail=InvalidParameter")
    server.wait(failed_id)
    slow_id = server.create(prompt="character1 steps=300 step_ms=100")
    page = page_for()
    _open_with_key(page, server, server.key)
    failed = page.locator(f'#tasks li[data-task-id="{failed_id}"]')
    expect(failed.locator(".badge")).to_have_text("FAILED")
    expect(failed.locator(".detail")).to_have_text("InvalidParameter: the scripted engine was told to fail")

    slow = page.locator(f'#tasks li[data-task-id="{slow_id}"]')
    expect(slow.locator(".badge")).to_have_text("RUNNING")
    expect(slow.locator("progress")).to_be_visible()
    page.wait_for_function(  # the poll moves the bar
        f"() => document.querySelector('li[data-task-id=\"{slow_id}\"] progress').value > 0")
    slow.get_by_role("button", name=f"Cancel task {slow_id}").click()
    expect(slow.locator(".badge")).to_have_text("CANCELED")
    expect(slow.locator("progress")).to_be_hidden()
    assert server.get(slow_id)["output"]["task_status"] == "CANCELED"

    # A client-side rule, and a server-side one: the envelope is shown.
    page.get_by_role("button", name="Create video").click()
    expect(page.locator("#error")).to_have_text("Write a prompt first.")
    page.get_by_label("Prompt", exact=True).fill("character1 waves")
    page.get_by_label("Reference URL").fill("oss://nobody/uploaded/this.png")
    page.get_by_role("button", name="Add URL").click()
    page.get_by_role("button", name="Create video").click()
    expect(page.locator("#error")).to_contain_text("InvalidURL: reference 1: unknown oss:// key")
    assert page.errors == []


def test_phone_sized_screen(server: LiveServer, page_for: Callable[..., Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = page_for(375, 700)
    _open_with_key(page, server, server.key)
    page.get_by_label("Prompt", exact=True).fill("character1 and character2 wave steps=2")
    # A long URL wraps instead of widening the page; then it is removed again.
    page.get_by_label("Reference URL").fill("https://example.invalid/" + "a-long-path-segment" * 12 + ".png")
    page.get_by_role("button", name="Add URL").click()
    expect(page.locator("#refs li")).to_have_count(1)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    page.locator("#refs li").first.get_by_role("button", name="Remove").click()
    expect(page.locator("#refs li")).to_have_count(0)
    for name in ("a.png", "c.mp4"):
        page.get_by_label("Reference URL").fill(ref_url(name))
        page.get_by_role("button", name="Add URL").click()
    expect(page.locator("#refs li")).to_have_count(2)
    expect(page.locator("#refs li").nth(1).locator(".name")).to_have_text("character2")
    # Reorder: the video becomes character1.
    page.locator("#refs li").nth(1).get_by_role("button", name="Up").click()
    expect(page.locator("#refs li").first).to_have_attribute("data-kind", "video")

    # wan2.6-r2v always has sound: its audio box is checked and locked.
    page.get_by_label("Audio", exact=True).uncheck()
    page.get_by_label("Model", exact=True).select_option("wan2.6-r2v")
    expect(page.get_by_label("Audio", exact=True)).to_be_disabled()
    expect(page.get_by_label("Audio", exact=True)).to_be_checked()

    submit = page.get_by_role("button", name="Create video")
    submit.scroll_into_view_if_needed()
    expect(submit).to_be_visible()
    box = submit.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    for field in ("Model", "Size", "Shot type", "Seed (optional)", "Audio", "Watermark"):
        expect(page.get_by_label(field, exact=True)).to_be_visible()

    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    submit.click()
    task = page.locator("#tasks li").first
    expect(task.locator(".badge")).not_to_have_text("PENDING", timeout=30_000)
    expect(task.locator(".badge")).not_to_have_text("RUNNING", timeout=30_000)
    assert task.locator(".badge").inner_text() == "SUCCEEDED", task.inner_text()
    expect(task.locator(".meta")).to_contain_text("wan2.6-r2v ·")
    expect(page.locator("#player")).to_have_attribute("src", re.compile("/v1/results/"))
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert page.errors == []
