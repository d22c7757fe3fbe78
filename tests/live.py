"""A real ref2video app on loopback, and helpers to drive it over HTTP."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ref2video.api.app import create_app
from ref2video.api.server import server_config
from ref2video.config import Settings
from ref2video.service import Service
from ref2video.app import keys

from tests.http_server import Server
from tests.media.media_files import make_image, make_video, make_voice

SCRIPTED = "tests.fixtures.engines:ScriptedEngine"
TEST_MODELS = {"wan2.6-r2v": SCRIPTED, "wan2.6-r2v-flash": SCRIPTED, "wan2.7-r2v": SCRIPTED}
ROOT = Path(__file__).resolve().parent.parent
# PYTHONPATH for child processes: this checkout's package (src/) before any installed copy, and tests/.
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT / "src"), str(ROOT)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_refs: Server | None = None
_refs_lock = threading.Lock()


def reference_server() -> Server:
    """One loopback server for the whole run, serving real sample references:
    /a.png (320x240), /b.jpg (400x600), /c.mp4 (2 s with sound), /role1.mp4, /role2.mp4,
    /object4.png and /background5.png (the seed document's four, made here); for the media form,
    /tall.png (360x640), /voice.wav (2 s at 230 Hz), /voice.mp3 (2 s at 110 Hz) and
    /long-voice.mp3 (12 s, too long for a voice)."""
    global _refs
    with _refs_lock:
        if _refs is None:
            import tempfile

            root = Path(tempfile.mkdtemp(prefix="r2v-refs-"))
            files = {
                "/a.png": (make_image(root / "a.png", "PNG"), "image/png"),
                "/b.jpg": (make_image(root / "b.jpg", "JPEG", size=(400, 600)), "image/jpeg"),
                "/c.mp4": (make_video(root / "c.mp4", 2, audio=True), "video/mp4"),
                "/role1.mp4": (make_video(root / "role1.mp4", 3, size=(360, 640), audio=True), "video/mp4"),
                "/role2.mp4": (make_video(root / "role2.mp4", 2, size=(480, 640), audio=True), "video/mp4"),
                "/object4.png": (make_image(root / "object4.png", "PNG", size=(400, 400), mode="RGBA"), "image/png"),
                "/background5.png": (make_image(root / "bg5.png", "PNG", size=(1280, 720)), "image/png"),
                "/tall.png": (make_image(root / "tall.png", "PNG", size=(360, 640)), "image/png"),
                "/voice.wav": (make_voice(root / "voice.wav", 2.0, 230.0), "audio/wav"),
                "/voice.mp3": (make_voice(root / "voice.mp3", 2.0, 110.0, fmt="mp3"), "audio/mpeg"),
                "/long-voice.mp3": (make_voice(root / "long.mp3", 12.0, fmt="mp3"), "audio/mpeg"),
            }
            server = Server()
            for path, (file, kind) in files.items():
                server.serve_file(path, file, kind)
            _refs = server
    return _refs


def ref_url(name: str) -> str:
    return reference_server().url(f"/{name}")


def seed_body() -> dict[str, Any]:
    """The seed document's request, with its four references served on loopback."""
    from tests.test_spec import SEED_BODY

    body = json.loads(json.dumps(SEED_BODY))
    body["input"]["reference_urls"] = [ref_url(n) for n in ("role1.mp4", "role2.mp4", "object4.png", "background5.png")]
    return body


def settings_for(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir, database_url=database_url, models=dict(TEST_MODELS),
        lease_seconds=2.0, reap_interval=0.2, poll_interval=30.0, shutdown_grace=2.0,
        fetch_allow=["127.0.0.0/8"], cache_max_bytes=0,
    )
    if "storage" not in overrides:
        values.update(_test_storage())
    values.update(overrides)
    return Settings(**values)


_s3_server: Any = None


# For the tests of the API's own signed result links (their signatures, expiry, Range answers):
# on a bucket (REF2VIDEO_TEST_STORAGE=s3) their server serves videos through the API, as with
# `s3_private`; on the local disk this changes nothing.
API_LINKS: dict[str, Any] = {"s3_private": True}


def _test_storage() -> dict[str, Any]:
    """REF2VIDEO_TEST_STORAGE=s3 (presigned links) or s3-private (served through the API) runs
    every test server on a bucket of its own in one moto server for the run; unset: local."""
    global _s3_server
    choice = os.environ.get("REF2VIDEO_TEST_STORAGE", "")
    if choice not in ("s3", "s3-private"):
        return {}
    from tests.s3_server import S3Server

    with _refs_lock:
        if _s3_server is None:
            import atexit

            _s3_server = S3Server.start()
            atexit.register(_s3_server.stop)
    return {**_s3_server.settings(_s3_server.bucket()), "s3_private": choice == "s3-private"}


@dataclass
class LiveServer:
    """A real ref2video app served by uvicorn on loopback, in this process."""

    url: str
    key: str
    service: Service
    _server: uvicorn.Server
    _thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)
    _pollers: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def results_url(self) -> str:
        """Where this server's `video_url` links point: its own signed `/v1/results/` links, or,
        on a bucket with presigned links, the bucket's `results/` folder."""
        s = self.service.settings
        if s.storage == "s3" and not s.s3_private:
            prefix = s.s3_prefix.strip("/") + "/" if s.s3_prefix.strip("/") else ""
            return f"{s.s3_endpoint_url}/{s.s3_bucket}/{prefix}results/"
        return f"{self.url}/v1/results/"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def _polling_client(self, key: str | None) -> httpx.Client:
        """One client per key for repeated queries: a client costs an SSL context (~0.5 MB)."""
        key = key or self.key
        if key not in self._pollers:
            self._pollers[key] = self.client(key)
        return self._pollers[key]

    def new_key(self, owner: str = "default") -> str:
        key, _ = keys.create_key(self.service.db, owner=owner)
        return key

    def create(self, body: dict[str, Any] | None = None, key: str | None = None, **parameters: Any) -> str:
        """Create a task through the gateway route; its id."""
        body = body or make_body(**parameters)
        r = self.client(key).post("/task/bailian/ref2video", json=body)
        assert r.status_code == 200, r.text
        return r.json()["output"]["task_id"]

    def get(self, task_id: str, key: str | None = None) -> dict[str, Any]:
        r = self._polling_client(key).get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, task_id: str, states: tuple[str, ...] = ("SUCCEEDED", "FAILED", "CANCELED"),
             timeout: float = 30.0, key: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(task_id, key)
            if body["output"]["task_status"] in states:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {body['output']} after {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self._server.should_exit = True
        self._thread.join(20)


def media_body(prompt: str = "Image 1 waves", media: list[dict[str, Any]] | None = None, model: str = "wan2.7-r2v",
               **parameters: Any) -> dict[str, Any]:
    """A create body of the media form (wan2.7-r2v)."""
    return {
        "model": model,
        "input": {"prompt": prompt, "media": media or [{"type": "reference_image", "url": ref_url("a.png")}]},
        "parameters": {"resolution": "720P", "ratio": "16:9", "duration": 5, **parameters},
    }


def make_body(prompt: str = "character1 waves", urls: list[str] | None = None, model: str = "wan2.6-r2v-flash",
              **parameters: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"prompt": prompt, "reference_urls": urls or [ref_url("a.png")]},
        "parameters": {"size": "1280*720", "duration": 5, **parameters},
    }


def start_server(settings: Settings, **parts: Any) -> LiveServer:
    """`parts` go to `Service` (storage=..., uploads=..., registry=...)."""
    service = Service(settings, **parts)
    app = create_app(service=service)
    port = free_port()
    config = server_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    first = settings.data_dir / "first-api-key.txt"
    key = first.read_text().strip() if first.exists() else keys.create_key(service.db)[0]
    return LiveServer(f"http://127.0.0.1:{port}", key, service, server, thread)


