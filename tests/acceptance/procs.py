"""ref2video processes for acceptance tests: started with the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.live import CHILD_PYTHONPATH, TEST_MODELS


def env_for(data_dir: Path, database_url: str, **settings: object) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH, "REF2VIDEO_DATA_DIR": str(data_dir),
           "REF2VIDEO_DATABASE_URL": database_url, "REF2VIDEO_MODELS": json.dumps(TEST_MODELS),
           "REF2VIDEO_LOG_LEVEL": "warning", "REF2VIDEO_FETCH_ALLOW": "127.0.0.0/8",  # the README's plain form
           "REF2VIDEO_CACHE_MAX_BYTES": "0"}
    env.update({f"REF2VIDEO_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def spawn(args: list[str], env: dict[str, str], log: Path,
          preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    """`python -m ref2video ARGS`; `preexec` runs in the child before it starts (resource limits)."""
    with open(log, "ab") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "ref2video", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server did not become healthy")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
