"""The whole service inside this process, on a loopback port: what `ref2video generate` uses
when no server is configured, so one command turns references into a video on a laptop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from .config import Settings
from .service import Service
from .app import keys

__all__ = ["embedded_server"]


@contextlib.contextmanager
def embedded_server(settings: Settings) -> Iterator[tuple[str, str]]:
    """Run the API and a worker on 127.0.0.1 (any free port) until the block ends.

    Yields (base URL, API key). The key is the data folder's first key, made (silently) if needed:
    a later `ref2video serve` of the same folder finds it in first-api-key.txt, as the README says.
    """
    from .api.app import create_app
    from .api.server import server_config

    service = Service(settings, announce_first_key=False)
    config = server_config(create_app(service=service), settings, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ref2video-embedded", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the embedded server could not start; see the log above")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", _key(settings, service)
    finally:
        server.should_exit = True
        thread.join(30)


def _key(settings: Settings, service: Service) -> str:
    first = settings.data_dir / "first-api-key.txt"
    if first.exists():
        key = first.read_text().strip()
        if service.auth.principal(key):
            return key
    return keys.create_key(service.db, owner="default", name="ref2video generate (in-process)")[0]
