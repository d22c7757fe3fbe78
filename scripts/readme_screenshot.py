"""Make the README's picture: the web page with a real preview task made from real references.

    python scripts/readme_screenshot.py [--out docs/images/web-ui.png]

It draws the references (two cut-out characters, a meadow, a short clip; see
preview_stills.py), serves them on loopback, runs ref2video in this process with the preview
engine, creates the seed document's kind of task through the API, opens the page in headless
Chromium (Debian's /usr/bin/chromium) with the key, plays the finished video to a moment where
a character speaks, and saves the screenshot.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]

from preview_stills import PROMPT, clip, figure, scene  # noqa: E402

from ref2video.config import Settings  # noqa: E402
from ref2video.embedded import embedded_server  # noqa: E402


def serve(folder: Path) -> str:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "web-ui.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        refs = root / "refs"
        refs.mkdir()
        files = [figure(refs / "hero.png", (70, 120, 210), (90, 50, 20)),
                 figure(refs / "friend.png", (210, 80, 110), (20, 20, 20)),
                 scene(refs / "meadow.jpg"), clip(refs / "ball.mp4")]
        base = serve(refs)
        settings = Settings(data_dir=root / "data", fetch_allow=["127.0.0.0/8"], cache_max_bytes=0)
        with embedded_server(settings) as (url, key):
            body = {"model": "wan2.6-r2v-flash",
                    "input": {"prompt": PROMPT, "reference_urls": [f"{base}/{f.name}" for f in files]},
                    "parameters": {"size": "1280*720", "duration": 8, "shot_type": "multi", "seed": 11}}
            headers = {"Authorization": f"Bearer {key}"}
            created = httpx.post(f"{url}/task/bailian/ref2video", json=body, headers=headers)
            task_id = created.json()["output"]["task_id"]
            deadline = time.monotonic() + 300
            while httpx.get(f"{url}/task/{task_id}", headers=headers).json()["output"]["task_status"] != "SUCCEEDED":
                if time.monotonic() > deadline:
                    raise SystemExit("the preview did not finish")
                time.sleep(0.5)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                context = browser.new_context(viewport={"width": 1280, "height": 1100}, bypass_csp=True)
                page = context.new_page()  # (bypass_csp: only for the waits below, which Playwright evaluates)
                page.goto(url)
                page.fill("#api-key", key)
                page.click("#key-save")
                page.get_by_role("button", name="Play").first.click()
                page.wait_for_function("document.querySelector('#player').readyState >= 2")
                page.evaluate("""() => new Promise((done) => {
                    const v = document.querySelector('#player');
                    v.pause();
                    v.controls = false;  // a still picture: no spinner or control bar over the frame
                    v.addEventListener('seeked', () => done(), { once: true });
                    v.currentTime = 3.2;
                })""")
                page.wait_for_function("() => document.querySelector('#player').readyState >= 3")
                page.mouse.move(5, 5)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
