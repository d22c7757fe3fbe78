"""A `LocalStorage.put` killed mid-way, in a real process: what a crash leaves on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import ref2video

__all__ = ["put_killed_before_rename"]

# The child kills itself (SIGKILL: no cleanup runs) as `put` is about to rename its fully
# written partial file into place, observed through the audit event `os.replace` raises.
_CHILD = """
import os, signal, sys
from pathlib import Path
from ref2video.storage.local import LocalStorage

def hook(event, args):
    if event == "os.rename" and str(args[0]).endswith(".partial"):
        os.kill(os.getpid(), signal.SIGKILL)

storage = LocalStorage(Path(sys.argv[1]))
sys.addaudithook(hook)
storage.put(sys.argv[2], Path(sys.argv[3]))
"""


def put_killed_before_rename(root: Path, key: str, source: Path) -> None:
    """Run `LocalStorage(root).put(key, source)` in a process killed just before its rename."""
    package_parent = str(Path(ref2video.__file__).resolve().parents[1])  # this checkout's copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(root), key, str(source)], env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
