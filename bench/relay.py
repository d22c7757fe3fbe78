"""The DashScope relay with 10,000 tasks in flight in one process: memory, the poll rate the
provider saw, and the lag between the provider finishing a task and ours finishing.

Usage:

    python bench/relay.py [--tasks 10000] [--accounts 5] [--rate 20] [--submit-rate 50]
                          [--min-seconds 90] [--max-seconds 300] [--json out.json]

Method
------
Two processes on loopback, and this one as the client:

* **provider**: ``bench/upstream.py``, an in-memory imitation of the provider's task API with
  ``--accounts`` keys. It enforces and measures each key's limits over every sliding second
  (``--rate`` queries, ``--submit-rate`` submits), answering 429 past them, and finishes each
  task ``uniform(--min-seconds, --max-seconds)`` after it was created (1 % fail). Its
  ``/stats`` gives, per key, the most calls that arrived in any one second, and each task's
  end time.
* **relay**: the real service, ``python -m ref2video serve`` on SQLite in a temp dir, with both
  models mapped to the ``dashscope`` engine, the provider's keys, and the same rates.

The client creates ``--tasks`` tasks through the gateway route (16 at a time), then samples
every second: the relay's resident memory (VmRSS from /proc), how many of our tasks hold an
upstream id and are not finished (in flight), and how many are finished. It stops when every
task has ended. The **ceilings** are the provider's own limits, measured by the provider in the
same run: the busiest second of each key divided by its limit must stay at or under 1, and the
429 count at 0. **Lag** is our task's end time minus the provider's end time of its upstream
task, for every task (the provider's 15 s polling advice makes a naive poller's lag up to 15 s,
and with 10,000 tasks on 20 queries a second each task could only be asked about every
~100 s). Memory is reported idle (before the first task), at the peak, and per task in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--rate", type=int, default=20, help="queries per second per key")
    parser.add_argument("--submit-rate", type=int, default=50, help="submits per second per key")
    parser.add_argument("--min-seconds", type=float, default=90.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="r2v-bench-relay-") as tmp:
        result = run(args, Path(tmp))
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    keys = [f"sk-bench-{i}" for i in range(args.accounts)]
    clip = make_clip(tmp / "clip.mp4")
    up_port, relay_port = free_port(), free_port()
    upstream = spawn([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port),
                      "--keys", ",".join(keys), "--rate", str(args.rate), "--submit-rate", str(args.submit_rate),
                      "--min-seconds", str(args.min_seconds), "--max-seconds", str(args.max_seconds),
                      "--video", str(clip)], os.environ.copy(), tmp / "upstream.log")
    data = tmp / "relay"
    env = {**os.environ, "REF2VIDEO_DATA_DIR": str(data), "REF2VIDEO_PORT": str(relay_port),
           "REF2VIDEO_LOG_LEVEL": "warning",
           "REF2VIDEO_MODELS": json.dumps({"wan2.6-r2v": "dashscope", "wan2.6-r2v-flash": "dashscope"}),
           "REF2VIDEO_DASHSCOPE_BASE_URL": f"http://127.0.0.1:{up_port}/api/v1",
           "REF2VIDEO_DASHSCOPE_API_KEYS": json.dumps(keys), "REF2VIDEO_DASHSCOPE_TIMEZONE": "UTC",
           "REF2VIDEO_DASHSCOPE_QUERY_RATE": str(args.rate),
           "REF2VIDEO_DASHSCOPE_SUBMIT_RATE": str(args.submit_rate)}
    relay = spawn([sys.executable, "-m", "ref2video", "serve"], env, tmp / "relay.log")
    try:
        wait_up(f"http://127.0.0.1:{up_port}/stats", upstream)
        relay_url = f"http://127.0.0.1:{relay_port}"
        wait_up(f"{relay_url}/health", relay)
        time.sleep(1.0)
        idle_rss = rss(relay.pid)
        key = (data / "first-api-key.txt").read_text().strip()
        started = time.monotonic()
        samples: list[dict[str, Any]] = []
        created = asyncio.run(create_tasks(relay_url, key, args.tasks, samples, relay.pid, data, started))
        created_s = time.monotonic() - started
        while True:
            samples.append(sample(relay.pid, data, started))
            if samples[-1]["ended"] >= args.tasks:
                break
            if time.monotonic() - started > args.timeout or relay.poll() is not None:
                raise RuntimeError(f"the relay did not finish: {samples[-1]}; see {tmp / 'relay.log'}")
            time.sleep(1.0)
        stats = httpx.get(f"http://127.0.0.1:{up_port}/stats", timeout=60).json()
        lags = lag_seconds(data, stats)
        finished = outcome_counts(data)
    finally:
        for proc in (relay, upstream):
            stop(proc)
    peak = max(samples, key=lambda s: s["rss"])
    busiest = max(samples, key=lambda s: s["in_flight"])
    most_in_flight = busiest["in_flight"]
    per_key = stats["keys"]
    return {
        "machine": machine(),
        "tasks": args.tasks, "accounts": args.accounts, "rate": args.rate, "submit_rate": args.submit_rate,
        "task_seconds": [args.min_seconds, args.max_seconds],
        "created_in_s": round(created_s, 1), "created": created,
        "wall_s": round(samples[-1]["t"], 1),
        "most_in_flight": most_in_flight,
        "rss_idle_mb": round(idle_rss / 2**20, 1), "rss_peak_mb": round(peak["rss"] / 2**20, 1),
        "rss_peak_in_flight": peak["in_flight"],
        "rss_busiest_mb": round(busiest["rss"] / 2**20, 1),
        "bytes_per_task_in_flight": round((busiest["rss"] - idle_rss) / max(1, most_in_flight)),
        "max_queries_per_s": max(k["max_queries_per_s"] for k in per_key.values()),
        "max_submits_per_s": max(k["max_submits_per_s"] for k in per_key.values()),
        "query_ceiling_ratio": round(max(k["max_queries_per_s"] for k in per_key.values()) / args.rate, 2),
        "throttled": sum(k["throttled"] for k in per_key.values()),
        "queries": sum(k["queries"] for k in per_key.values()),
        "queries_per_task": round(sum(k["queries"] for k in per_key.values()) / args.tasks, 2),
        "lag_s": {"p50": pct(lags, 50), "p95": pct(lags, 95), "p99": pct(lags, 99), "max": round(max(lags), 2),
                  "mean": round(statistics.fmean(lags), 2)},
        "outcomes": finished,
        "timeline": samples[:: max(1, len(samples) // 40)],
    }


async def create_tasks(url: str, key: str, n: int, samples: list[dict[str, Any]], pid: int, data: Path,
                       started: float) -> int:
    """Create `n` tasks, 16 at a time, sampling once a second meanwhile."""
    body = {"model": "wan2.6-r2v-flash",
            "input": {"prompt": "character1 walks through the rain", "reference_urls": ["https://example.com/a.png"]},
            "parameters": {"size": "1280*720", "duration": 5}}
    done = 0
    queue = iter(range(n))

    async def creator(client: httpx.AsyncClient) -> None:
        nonlocal done
        for _ in queue:
            r = await client.post("/task/bailian/ref2video", json=body)
            r.raise_for_status()
            done += 1

    async def sampler() -> None:
        while done < n:
            samples.append(sample(pid, data, started))
            await asyncio.sleep(1.0)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        await asyncio.gather(sampler(), *(creator(client) for _ in range(16)))
    return done


def sample(pid: int, data: Path, started: float) -> dict[str, Any]:
    with sqlite3.connect(f"file:{data / 'ref2video.db'}?mode=ro", uri=True, timeout=30) as db:
        in_flight, ended = db.execute(
            "SELECT SUM(status = 'RUNNING' AND upstream_id IS NOT NULL), "
            "SUM(status IN ('SUCCEEDED', 'FAILED', 'CANCELED')) FROM tasks").fetchone()
    return {"t": round(time.monotonic() - started, 1), "rss": rss(pid), "in_flight": in_flight or 0,
            "ended": ended or 0}


def lag_seconds(data: Path, stats: dict[str, Any]) -> list[float]:
    """Our end time minus the provider's, per task (both epoch ms on this machine's clock)."""
    with sqlite3.connect(f"file:{data / 'ref2video.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT upstream_id, ended_at FROM tasks WHERE upstream_id IS NOT NULL").fetchall()
    ended = stats["ended"]
    return [(ours - ended[upstream]) / 1000 for upstream, ours in rows if upstream in ended]


def outcome_counts(data: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{data / 'ref2video.db'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())


def print_report(r: dict[str, Any]) -> None:
    print(f"relay benchmark on {r['machine']}")
    print(f"  {r['tasks']} tasks on {r['accounts']} accounts ({r['rate']} queries/s and {r['submit_rate']} "
          f"submits/s each), each {r['task_seconds'][0]:g}-{r['task_seconds'][1]:g} s at the provider")
    print(f"  created in {r['created_in_s']} s; all ended after {r['wall_s']} s: {r['outcomes']}")
    print(f"  most in flight at once: {r['most_in_flight']}")
    print(f"  memory: idle {r['rss_idle_mb']} MB; {r['rss_busiest_mb']} MB with {r['most_in_flight']} in flight "
          f"= {r['bytes_per_task_in_flight']} bytes per task in flight; peak {r['rss_peak_mb']} MB "
          f"(with {r['rss_peak_in_flight']} in flight)")
    print(f"  busiest second of any key: {r['max_queries_per_s']} queries (limit {r['rate']}, ratio "
          f"{r['query_ceiling_ratio']}), {r['max_submits_per_s']} submits (limit {r['submit_rate']}); "
          f"429s: {r['throttled']}")
    print(f"  queries: {r['queries']} in all, {r['queries_per_task']} per task")
    lag = r["lag_s"]
    print(f"  lag after the provider finished: p50 {lag['p50']} s, p95 {lag['p95']} s, p99 {lag['p99']} s, "
          f"max {lag['max']} s, mean {lag['mean']} s")


# -- helpers ------------------------------------------------------------------------------------


def make_clip(path: Path) -> Path:
    """A one-second 64x64 H.264 MP4: what every finished task serves."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 10)
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * (i % 6), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT)


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


if __name__ == "__main__":
    main()
