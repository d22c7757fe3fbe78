"""A real S3-compatible server for the tests: moto's standalone server, in its own process on
loopback (or any address, for the partition test), with a fresh bucket per test.

    server = S3Server.start()
    bucket = server.bucket()          # a new, empty bucket's name
    settings: storage="s3", **server.settings(bucket)
    server.stop()
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.live import free_port

ACCESS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1"}


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    host: str
    port: int

    @classmethod
    def start(cls, host: str = "127.0.0.1", bind: str | None = None) -> S3Server:
        port = free_port()
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", bind or host, "-p", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        server = cls(proc, host, port)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}")
            try:
                httpx.get(f"{server.url}/moto-api/", timeout=1)
                return server
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, **timeouts: Any) -> Any:
        from ref2video.storage.s3 import make_client

        return make_client(endpoint_url=self.url, region="us-east-1", access_key_id="testing",
                           secret_access_key="testing", **timeouts)

    def bucket(self) -> str:
        name = f"r2v-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, url: str | None = None) -> dict[str, Any]:
        """The settings of `storage = "s3"` on `bucket`, reached at `url` (default: ours)."""
        return {"storage": "s3", "s3_bucket": bucket, "s3_endpoint_url": url or self.url, **ACCESS,
                "s3_connect_timeout": 2.0, "s3_read_timeout": 5.0, "s3_max_attempts": 2}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
