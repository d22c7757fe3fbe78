"""The command line as a user runs it: `python -m ref2video ...` in a child process, its output
piped, or on a pseudo-terminal of a chosen width."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.live import CHILD_PYTHONPATH

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def child_env(tmp: Path, **env: str) -> dict[str, str]:
    """A clean environment (no REF2VIDEO_* of the caller's) with this checkout importable."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REF2VIDEO_") and k != "COLUMNS"}
    environment.update(PYTHONPATH=CHILD_PYTHONPATH, REF2VIDEO_DATA_DIR=str(tmp / "data"))
    environment.update(env)
    return environment


def run(args: list[str], tmp: Path, *, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout and stderr piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "ref2video", *args], env=child_env(tmp, **env), cwd=cwd or tmp,
                          capture_output=True, text=True, timeout=300)


def run_in_terminal(args: list[str], tmp: Path, *, columns: int, timeout: float = 120.0,
                    **env: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal `columns` wide; its exit status and what it showed
    (stdout and stderr together, escape sequences removed, lines ending in \\n)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "ref2video", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=child_env(tmp, TERM="xterm-256color", **env), cwd=tmp, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = _ESCAPE.sub("", b"".join(chunks).decode(errors="replace"))
    return code, text.replace("\r\n", "\n").replace("\r", "\n")
