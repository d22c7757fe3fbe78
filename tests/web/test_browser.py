"""The web page at `/`, driven in real headless Chromium (Debian's) through Playwright
(fixtures in conftest.py). Each test leaves its screenshots in its tmp_path. (The README's
picture is made by scripts/readme_screenshot.py, from a real preview task.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from PIL import Image, ImageDraw

from tests.live import LiveServer, ref_url
from tests.web.conftest import TIMEOUT_MS

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")
# Anything that looks like a date or a time, in any of the usual spellings.
ANY_DATE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(?:[ T,]*\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:\s?[AP]M)?)?")

# How many cards the message bar's box intersects (0: it covers none).
COVERED_CARDS = """() => {
  const bar = document.querySelector('.messages').getBoundingClientRect();
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  return Array.from(document.querySelectorAll('.card, .task'))
    .filter((card) => hit(bar, card.getBoundingClientRect())).length;
}"""
# A label's geometry: one line high, no wrapping, its row not overflowing.
LINE_OF = """(node) => {
  const style = getComputedStyle(node);
  return {height: node.getBoundingClientRect().height, line: parseFloat(style.lineHeight),
          nowrap: style.whiteSpace === 'nowrap', text: node.textContent,
          fits: node.parentElement.scrollWidth <= node.parentElement.clientWidth};
}"""


def _states(text: str) -> list[str]:
    return [word for word in re.findall(r"[A-Z]+", text) if word in STATES]


def _bar_and_card(page: Any, task_id: str) -> tuple[str, str]:
    """The status line and the card's badge, read in one go (the page cannot change between)."""
    bar, badge = page.evaluate(
        "(id) => [document.getElementById('status').textContent,"
        " document.querySelector(`li[data-task-id=\"${id}\"] .badge`).textContent]", task_id)
    return bar, badge


def _one_line(label: Any) -> None:
    geometry = label.evaluate(LINE_OF)
    assert geometry["nowrap"] and geometry["fits"], geometry
    assert geometry["height"] < 1.5 * geometry["line"], geometry


def _dates_of(page: Any) -> list[str]:
    texts = page.locator("#tasks .meta, #tasks .detail").all_inner_texts()
    found = [d for text in texts for d in ANY_DATE.findall(text)]
    assert all(DATE.fullmatch(d) for d in found), found
    return found


def _add_url(page: Any, url: str) -> None:
    page.get_by_label("Reference URL").fill(url)
    page.get_by_role("button", name="Add URL").click()


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
    failed_id = server.create(prompt="character1 dances in the rain fail=InvalidParameter")
    server.wait(failed_id)
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
    assert href and href.startswith(server.results_url)
    assert httpx.get(href).status_code == 200

    # One more, running, for the picture: the list shows every state the page draws.
    running_id = server.create(prompt="character1 and the hero walk along the shore at dusk steps=600 step_ms=100")
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_function(
        "(id) => { const li = document.querySelector(`li[data-task-id=\"${id}\"]`);"
        " return li && li.dataset.status === 'RUNNING' && li.querySelector('progress').value > 0; }",
        arg=running_id)
    _dates_of(page)

    # The page from its top, once Chromium's player has hidden its loading spinner (about 1 s).
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(1500)
    shot = tmp_path / "web-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert server.client().post(f"/api/v1/tasks/{running_id}/cancel").status_code == 200
    assert page.errors == []


def test_a_wrong_key_is_refused_not_saved(server: LiveServer, page_for: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = page_for()
    _open_with_key(page, server, "r2v-000000000000-not-a-real-secret")
    expect(page.locator("#error")).to_contain_text(
        "That key was refused (InvalidApiKey: Invalid API-key provided.); it was not saved.")
    expect(page.locator("#status")).not_to_contain_text("Key saved")
    expect(page.locator("#key-state")).to_contain_text("No key saved")
    expect(page.get_by_role("button", name="Forget key")).to_be_disabled()
    assert page.evaluate("() => localStorage.getItem('ref2video.apiKey')") is None

    # The right key is accepted; a wrong one after it leaves it in use.
    page.get_by_label("API key", exact=True).fill(server.key)
    page.get_by_role("button", name="Save key").click()
    expect(page.locator("#status")).to_have_text("Key saved: the server accepts it.")
    expect(page.locator("#error")).to_be_empty()
    _open_with_key(page, server, "r2v-000000000000-still-not-a-secret")
    expect(page.locator("#error")).to_contain_text("The key saved before is still used.")
    assert page.evaluate("() => localStorage.getItem('ref2video.apiKey')") == server.key
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

    # One task held running at a gate, two queued behind it: the longest progress labels.
    gate = tmp_path / "gate-open"
    held = server.create(prompt=f"character1 gate={gate}")
    queued = [server.create(prompt="character1 waits its turn") for _ in range(2)]
    server.wait(held, states=("RUNNING",))
    page = page_for(375, 700)
    _open_with_key(page, server, server.key)
    last = page.locator(f'#tasks li[data-task-id="{queued[-1]}"] .pct')
    expect(last).to_have_text("queued, position 1")
    for task_id in (held, *queued):
        _one_line(page.locator(f'#tasks li[data-task-id="{task_id}"] .pct'))
    page.screenshot(path=str(tmp_path / "phone-queue.png"), full_page=True)
    gate.touch()
    expect(page.locator(f'#tasks li[data-task-id="{queued[-1]}"] .badge')).to_have_text("SUCCEEDED", timeout=30_000)

    page.get_by_label("Prompt", exact=True).fill("character1 and character2 wave steps=2")
    # A long URL wraps instead of widening the page; then it is removed again.
    page.get_by_label("Reference URL").fill("https://example.invalid/" + "a-long-path-segment" * 12 + ".png")
    page.get_by_role("button", name="Add URL").click()
    expect(page.locator("#refs li")).to_have_count(1)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    page.locator("#refs li").first.get_by_role("button", name="Remove").click()
    expect(page.locator("#refs li")).to_have_count(0)
    # Far below the message bar, an error is also written under the control it is about.
    page.get_by_role("button", name="Create video").click()
    note = page.locator("#error-note")
    expect(note).to_have_text("Add at least one reference (a URL or an uploaded file).")
    expect(note).to_be_in_viewport()
    expect(page.get_by_label("Reference URL")).to_be_focused()
    expect(page.get_by_label("Reference URL")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error")).to_have_text("Add at least one reference (a URL or an uploaded file).")
    for name in ("a.png", "c.mp4"):
        page.get_by_label("Reference URL").fill(ref_url(name))
        page.get_by_role("button", name="Add URL").click()
    expect(page.locator("#refs li")).to_have_count(2)
    expect(note).to_have_count(0)
    expect(page.get_by_label("Reference URL")).not_to_have_attribute("aria-invalid", "true")
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
    expect(task).not_to_have_attribute("data-task-id", queued[-1])
    expect(task).to_be_in_viewport()  # scrolled to: it is below the form on a phone
    expect(task.locator(".badge")).not_to_have_text("PENDING", timeout=30_000)
    expect(task.locator(".badge")).not_to_have_text("RUNNING", timeout=30_000)
    assert task.locator(".badge").inner_text() == "SUCCEEDED", task.inner_text()
    expect(task.locator(".meta")).to_contain_text("wan2.6-r2v ·")
    expect(page.locator("#player")).to_have_attribute("src", re.compile(re.escape(server.results_url)))
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert page.errors == []


def test_a_running_task_on_its_card_and_in_the_status_line(server: LiveServer, page_for: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    from playwright.sync_api import expect

    zone = "Asia/Kolkata"  # neither UTC nor the server's Beijing time, and half an hour off both
    page = page_for(1280, 900, timezone_id=zone)
    _open_with_key(page, server, server.key)
    expect(page.locator("#status")).to_have_text("Key saved: the server accepts it.")
    prompt = ("character1 waves steps=40 step_ms=100 and then walks slowly along the shore while the evening "
              "light turns the sea to gold and the gulls circle overhead")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    _add_url(page, ref_url("a.png"))
    page.get_by_role("button", name="Create video").click()
    card = page.locator("#tasks li").first
    expect(card).to_be_in_viewport()
    task_id = card.get_attribute("data-task-id")
    assert task_id

    page.wait_for_function(
        "(id) => { const li = document.querySelector(`li[data-task-id=\"${id}\"]`);"
        " return li.dataset.status === 'RUNNING' && li.querySelector('progress').value > 0; }", arg=task_id)
    bar, badge = _bar_and_card(page, task_id)
    assert badge == "RUNNING" and task_id in bar and _states(bar) == ["RUNNING"], bar
    _one_line(card.locator(".pct"))
    shown = card.locator(".prompt")
    text = shown.inner_text()
    assert text.endswith("…") and len(text) <= 100 and prompt.startswith(text[:-1]), text
    assert shown.get_attribute("title") == prompt
    # The bar is in the page's flow: wherever the page is scrolled, it covers no card.
    for y in (0, 150, 400, 100_000):
        page.evaluate("(y) => window.scrollTo(0, y)", y)
        assert page.evaluate(COVERED_CARDS) == 0, y
    page.screenshot(path=str(tmp_path / "running.png"), full_page=True)

    expect(card.locator(".badge")).to_have_text("SUCCEEDED", timeout=30_000)
    bar, badge = _bar_and_card(page, task_id)
    assert badge == "SUCCEEDED" and _states(bar) == ["SUCCEEDED"], bar
    expect(card.locator(".detail")).to_contain_text("finished ")
    item = server.client().get("/api/v1/tasks").json()["data"][0]
    assert item["task_id"] == task_id

    def local(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")

    assert _dates_of(page) == [local(item["gmt_create"]), local(item["end_time"])]
    page.screenshot(path=str(tmp_path / "finished.png"), full_page=True)
    assert page.errors == []


def test_the_task_list_pages(server: LiveServer, page_for: Callable[..., Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ids = [server.create(prompt=f"character1 waves, take {n}") for n in range(25)]
    for task_id in ids:
        server.wait(task_id)
    page = page_for(1280, 900)
    _open_with_key(page, server, server.key)
    cards = page.locator("#tasks li")
    info = page.locator("#page-info")
    previous, following = (page.get_by_role("button", name=n) for n in ("Previous page", "Next page"))

    def shown() -> list[str]:
        return [str(cards.nth(i).get_attribute("data-task-id")) for i in range(cards.count())]

    expect(info).to_have_text("Page 1 of 2 · 25 tasks")
    expect(cards).to_have_count(20)
    assert shown() == ids[::-1][:20]
    expect(previous).to_be_disabled()
    following.click()
    expect(info).to_have_text("Page 2 of 2 · 25 tasks")
    expect(cards).to_have_count(5)
    assert shown() == ids[4::-1]
    expect(following).to_be_disabled()
    expect(previous).to_be_focused()  # the button pressed is disabled now: focus is not lost
    expect(cards.first.locator(".prompt")).to_have_text("character1 waves, take 4")  # orig_prompt
    _dates_of(page)
    page.screenshot(path=str(tmp_path / "page-2.png"), full_page=True)
    previous.click()
    expect(info).to_have_text("Page 1 of 2 · 25 tasks")
    expect(cards).to_have_count(20)

    # A task created while page 2 is shown brings back page 1, where it is.
    following.click()
    expect(cards).to_have_count(5)
    page.get_by_label("Prompt", exact=True).fill("character1 waves from page two")
    _add_url(page, ref_url("a.png"))
    page.get_by_role("button", name="Create video").click()
    expect(info).to_have_text("Page 1 of 2 · 26 tasks")
    expect(cards).to_have_count(20)
    expect(cards.first.locator(".prompt")).to_have_text("character1 waves from page two")
    expect(cards.first).to_be_in_viewport()
    expect(cards.first.locator(".badge")).to_have_text("SUCCEEDED", timeout=30_000)
    assert cards.first.get_attribute("data-task-id") not in ids
    assert page.errors == []


def test_wan27_sends_the_media_form(server: LiveServer, page_for: Callable[..., Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = page_for(1280, 1100)
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if r.method == "POST" and r.url.endswith("/task/bailian/ref2video") else None)
    _open_with_key(page, server, server.key)
    page.get_by_label("Model", exact=True).select_option("wan2.7-r2v")
    for name in ("Size", "Shot type", "Audio"):
        expect(page.get_by_label(name, exact=True)).to_be_hidden()
    for name in ("Resolution", "Aspect ratio", "Duration (seconds)", "Watermark"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    expect(page.locator("#audio-hint")).to_have_text("wan2.7-r2v always has sound.")
    expect(page.locator("#prompt-hint-media")).to_be_visible()

    # An image by its file's type, a video by its URL's extension; counted apart in the prompt.
    page.locator("#file-input").set_input_files(str(_png(tmp_path / "hero.png")))
    expect(page.locator("#refs li").first.locator(".state")).to_have_text("Uploaded")
    _add_url(page, ref_url("c.mp4"))
    expect(page.locator("#refs .name")).to_have_text(["Image 1", "Video 1"])
    page.get_by_label("Prompt", exact=True).fill("Image 1 waves to Video 1")
    page.get_by_label("Resolution", exact=True).select_option("1080P")
    page.get_by_label("Aspect ratio", exact=True).select_option("9:16")
    page.get_by_label("Duration (seconds)").fill("3")
    page.screenshot(path=str(tmp_path / "wan27-form.png"), full_page=True)
    page.get_by_role("button", name="Create video").click()
    card = page.locator("#tasks li").first
    expect(card.locator(".badge")).to_have_text("SUCCEEDED", timeout=30_000)
    expect(page.locator("#error")).to_be_empty()

    assert len(sent) == 1
    body = sent[0]
    assert body["model"] == "wan2.7-r2v" and "reference_urls" not in body["input"]
    media = body["input"]["media"]
    assert [m["type"] for m in media] == ["reference_image", "reference_video"]
    assert media[0]["url"].startswith("oss://") and media[1]["url"] == ref_url("c.mp4")
    assert body["parameters"] == {"resolution": "1080P", "ratio": "9:16", "duration": 3, "watermark": False}
    usage = server.get(str(card.get_attribute("data-task-id")))["usage"]
    assert usage["ratio"] == "9:16" and "size" not in usage
    expect(card.locator(".detail")).to_contain_text("1080P 9:16")
    expect(card.locator(".meta")).to_contain_text("wan2.7-r2v ·")

    # Back to a wan2.6 model: its size and shot type, and character1, character2.
    page.get_by_label("Model", exact=True).select_option("wan2.6-r2v-flash")
    expect(page.get_by_label("Size", exact=True)).to_be_visible()
    expect(page.get_by_label("Resolution", exact=True)).to_be_hidden()
    expect(page.locator("#refs .name")).to_have_text(["character1", "character2"])
    assert page.errors == []
