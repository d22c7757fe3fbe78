"""Reference ingest: five references at once against the slowest one alone, and the cache.

Usage:

    python bench/ingest.py [--repeat N] [--json out.json]

Method
------
Five real media files are made in a temp dir: three 1920x1080 images (two JPEGs of about
1 MB, a PNG of about 4 MB; a gradient with noise, so they do not compress to nothing) and two
H.264 MP4s (960x540, 24 fps, 2 s and 3 s, about 1-1.5 MB). A small threaded HTTP server on
127.0.0.1 serves them, each *throttled* to its own rate (64 KiB chunks, paced against a
deadline) so that each file's transfer takes a known time: 0.5, 0.6, 0.8, 0.7 and 1.0 s.
Transfer time then dominates, and the slowest file is clearly the slowest. The server counts
every request, its status and the body bytes it sent.

Everything goes through `fetch_references_sync` (what the workers call), with
`FetchPolicy(allow=("127.0.0.0/8",))`, each run into a new work dir. Each repeat measures,
in this order:

1. **singles**: each file alone, no cache;
2. **five at once**, no cache. The ratio *five at once / slowest single* is the figure of
   merit: 1.0 means the downloads fully overlap, sum-of-singles / slowest is what a
   sequential ingest would give;
3. **cache, fresh**: responses carry `Cache-Control: max-age=3600` and an `ETag`. A cold run
   fills a new `MediaCache`; a warm run (new work dir, same cache) must send no request;
4. **cache, revalidated**: responses carry an `ETag` and `Cache-Control: no-cache` (no
   freshness), on the 304 too. A cold run fills a new cache; the warm run must revalidate
   each reference (`If-None-Match`) and get 304s with no body.

Wall times are `time.perf_counter` around the call; "cpu" is this process's CPU time
(`time.process_time`, all threads, the throttled server's included: it is small); "last req"
is when the server read the run's last request, from the start of the call (how long the
ingest took to get every download going). The table
shows the median over the repeats, with min and max; the ratio's median is taken over the
per-repeat ratios. Loopback only; every temp dir is removed and the server stopped on the way
out. It takes about 10 s per repeat; it stops starting new repeats after 50 s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from ref2video.media.cache import MediaCache
from ref2video.media.fetch import FetchPolicy
from ref2video.media.ingest import fetch_references_sync
from ref2video.media.reference import Reference

CHUNK = 64 * 1024
TIME_BUDGET = 50.0  # seconds; no new repeat starts after this
POLICY = FetchPolicy(allow=("127.0.0.0/8",), total_timeout=20.0, read_timeout=10.0)
# Cache headers per URL prefix: fresh for an hour, or "revalidate every time".
MODES = {
    "fresh": "max-age=3600",
    "reval": "no-cache",
}


# -- media ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Medium:
    name: str  # also the URL path's last part
    kind: str
    body: bytes
    seconds: float  # the throttled transfer time
    content_type: str

    @property
    def rate(self) -> float:
        """Bytes per second the server sends this file at."""
        return len(self.body) / self.seconds

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


def make_media() -> list[Medium]:
    """Three 1920x1080 images and two MP4s, a gradient with noise (so they have a real size)."""
    rng = np.random.default_rng(20240601)
    h, w = 1080, 1920
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(
        np.int16
    )

    def image(sigma: float, fmt: str, **options: Any) -> bytes:
        pixels = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(
            np.uint8
        )
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, fmt, **options)
        return out.getvalue()

    return [
        Medium("photo1.jpg", "image", image(20, "JPEG", quality=90), 0.5, "image/jpeg"),
        Medium("photo2.jpg", "image", image(25, "JPEG", quality=92), 0.6, "image/jpeg"),
        Medium(
            "still.png", "image", image(3, "PNG", compress_level=1), 0.8, "image/png"
        ),
        Medium("clip2s.mp4", "video", video(rng, 2, 4_000_000), 0.7, "video/mp4"),
        Medium("clip3s.mp4", "video", video(rng, 3, 4_000_000), 1.0, "video/mp4"),
    ]


def video(
    rng: np.random.Generator, seconds: int, bit_rate: int, fps: int = 24
) -> bytes:
    """An H.264 MP4, 960x540: a moving pattern with noise, at about `bit_rate`."""
    w, h = 960, 540
    y, x = np.mgrid[0:h, 0:w]
    noise = rng.integers(-20, 20, (h, w, 3), dtype=np.int16)
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = bit_rate
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast"}
        for i in range(seconds * fps):
            pattern = np.stack(
                [(x + 8 * i) % 256, (y + 4 * i) % 256, np.full_like(x, 3 * i % 256)], -1
            )
            pixels = np.clip(pattern + np.roll(noise, 7 * i, axis=1), 0, 255).astype(
                np.uint8
            )
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


# -- the throttled, counting server --------------------------------------------------------


@dataclasses.dataclass
class Hit:
    path: str
    status: int
    body_bytes: int
    conditional: bool  # the request carried If-None-Match
    arrived: float  # time.perf_counter() when the request was read


class ThrottledServer:
    """Serves each medium at its own rate on /fresh/NAME and /reval/NAME; records every hit."""

    def __init__(self, media: Sequence[Medium]) -> None:
        self.media = {m.name: m for m in media}
        self.hits: list[Hit] = []
        self.active = 0  # requests being answered
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="bench-http", daemon=True
        )
        self.thread.start()

    def url(self, mode: str, medium: Medium) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{medium.name}"

    def mark(self) -> int:
        with self.lock:
            return len(self.hits)

    def hits_since(self, mark: int, timeout: float = 2.0) -> list[Hit]:
        """The hits after `mark`, once no request is still being answered."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.active == 0 or time.monotonic() > deadline:
                    return self.hits[mark:]
            time.sleep(0.005)

    def record(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)
            self.active -= 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: ThrottledServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with server.lock:
                server.active += 1
            hit = Hit(
                self.path, 0, 0, "If-None-Match" in self.headers, time.perf_counter()
            )
            try:
                with contextlib.suppress(OSError):  # the client gave up
                    self._answer(hit)
            finally:
                server.record(hit)  # also ends the request's `active` count

        def _answer(self, hit: Hit) -> None:
            _, mode, name = (self.path.split("/", 2) + ["", ""])[:3]
            medium = server.media.get(name)
            if medium is None or mode not in MODES:
                hit.status = 404
                self.send_error(404)
                return
            common = {"ETag": medium.etag, "Cache-Control": MODES[mode]}
            if self.headers.get("If-None-Match") == medium.etag:
                hit.status = 304
                self.send_response(304)
                for header, value in common.items():
                    self.send_header(header, value)
                self.send_header("Connection", "close")
                self.end_headers()
                return
            hit.status = 200
            self.send_response(200)
            for header, value in {
                **common,
                "Content-Type": medium.content_type,
            }.items():
                self.send_header(header, value)
            self.send_header("Content-Length", str(len(medium.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            start = time.perf_counter()
            while hit.body_bytes < len(medium.body):
                chunk = medium.body[hit.body_bytes : hit.body_bytes + CHUNK]
                self.wfile.write(chunk)
                hit.body_bytes += len(chunk)
                # Paced against a deadline, so sleep overshoot does not add up.
                delay = start + hit.body_bytes / medium.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# -- measuring -----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    wall: float
    cpu: float
    requests: int
    not_modified: int
    body_bytes: int
    # Seconds from the call to the server reading the run's first and last request.
    first_request: float | None
    last_request: float | None
    refs: list[Reference]


class Bench:
    def __init__(self, server: ThrottledServer, scratch: Path) -> None:
        self.server, self.scratch = server, scratch
        self.runs = 0

    def ingest(self, urls: list[str], cache: MediaCache | None = None) -> Run:
        self.runs += 1
        work_dir = self.scratch / f"work{self.runs}"
        mark = self.server.mark()
        cpu, wall = time.process_time(), time.perf_counter()
        called = wall
        refs = fetch_references_sync(
            urls, work_dir=work_dir, policy=POLICY, cache=cache
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hits = self.server.hits_since(mark)
        arrivals = [h.arrived - called for h in hits]
        run = Run(
            wall, cpu, len(hits), sum(h.status == 304 for h in hits), sum(h.body_bytes for h in hits),
            min(arrivals, default=None), max(arrivals, default=None), refs,
        )  # fmt: skip
        shutil.rmtree(work_dir, ignore_errors=True)
        return run


def one_repeat(bench: Bench, media: Sequence[Medium], number: int) -> dict[str, Any]:
    server = bench.server
    fresh = [server.url("fresh", m) for m in media]
    result: dict[str, Any] = {"singles": {}}
    for medium, url in zip(media, fresh):
        result["singles"][medium.name] = run_dict(bench.ingest([url]))
    together = bench.ingest(fresh)
    check(together.refs, media)
    result["five_at_once"] = run_dict(together)
    for mode in MODES:
        cache = MediaCache(bench.scratch / f"cache-{mode}-{number}")
        urls = [server.url(mode, m) for m in media]
        cold = bench.ingest(urls, cache)
        warm = bench.ingest(urls, cache)
        check(warm.refs, media)
        if [r.sha256 for r in warm.refs] != [r.sha256 for r in cold.refs]:
            raise AssertionError(
                f"{mode}: the warm run gave other files than the cold one"
            )
        result[f"{mode}_cold"] = run_dict(cold)
        result[f"{mode}_warm"] = run_dict(warm)
        shutil.rmtree(cache.root, ignore_errors=True)
    slowest = max(result["singles"].values(), key=lambda r: r["wall"])
    result["slowest_single"] = slowest["wall"]
    result["sum_singles"] = sum(r["wall"] for r in result["singles"].values())
    result["ratio"] = result["five_at_once"]["wall"] / slowest["wall"]
    result["sequential_ratio"] = result["sum_singles"] / slowest["wall"]
    return result


def run_dict(run: Run) -> dict[str, Any]:
    return {
        "wall": run.wall,
        "cpu": run.cpu,
        "requests": run.requests,
        "not_modified": run.not_modified,
        "body_bytes": run.body_bytes,
        "first_request": run.first_request,
        "last_request": run.last_request,
    }


def check(refs: list[Reference], media: Sequence[Medium]) -> None:
    got = [(r.kind, r.size) for r in refs]
    want = [(m.kind, len(m.body)) for m in media]
    if got != want:
        raise AssertionError(f"ingest gave {got}, expected {want}")


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summary(
    repeats: list[dict[str, Any]], media: Sequence[Medium]
) -> list[dict[str, Any]]:
    """One row per measurement: medians (min, max) over the repeats."""
    rows = []

    def row(label: str, runs: list[dict[str, Any]], note: str = "") -> None:
        med, lo, hi = stats([r["wall"] for r in runs])
        rows.append({
            "measurement": label,
            "median_s": med, "min_s": lo, "max_s": hi,
            "cpu_s": statistics.median(r["cpu"] for r in runs),
            "requests": statistics.median(r["requests"] for r in runs),
            "not_modified": statistics.median(r["not_modified"] for r in runs),
            "body_bytes": statistics.median(r["body_bytes"] for r in runs),
            "last_request_s": _median_or_none([r["last_request"] for r in runs]),
            "note": note,
        })  # fmt: skip

    for m in media:
        row(
            f"single {m.name}",
            [r["singles"][m.name] for r in repeats],
            f"throttled to {m.seconds:g} s",
        )
    row("five at once, no cache", [r["five_at_once"] for r in repeats])
    row("cache fresh: cold", [r["fresh_cold"] for r in repeats], "max-age=3600 + ETag")
    row(
        "cache fresh: warm",
        [r["fresh_warm"] for r in repeats],
        "new work dir, same cache",
    )
    row(
        "cache revalidated: cold", [r["reval_cold"] for r in repeats], "no-cache + ETag"
    )
    row(
        "cache revalidated: warm",
        [r["reval_warm"] for r in repeats],
        "If-None-Match -> 304",
    )
    return rows


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['date']}; "
          f"load average {m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after; "
          f"{report['repeats']} repeats, {report['elapsed_s']:.1f} s in all\n")  # fmt: skip
    print(
        f"{'file':<12} {'kind':<6} {'bytes':>10} {'rate MB/s':>10} {'throttled s':>12}"
    )
    for f in report["files"]:
        print(
            f"{f['name']:<12} {f['kind']:<6} {f['bytes']:>10,} {f['rate'] / 1e6:>10.2f} {f['seconds']:>12.2f}"
        )
    print()
    header = (f"{'measurement':<30} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>6} {'req':>4} {'304':>4}"
              f" {'body bytes':>11} {'last req s':>10}")
    print(header)
    print("-" * len(header))
    for r in report["rows"]:
        print(f"{r['measurement']:<30} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} {r['cpu_s']:>6.2f}"
              f" {r['requests']:>4g} {r['not_modified']:>4g} {r['body_bytes']:>11,.0f}"
              f" {_fmt(r['last_request_s']):>10}  {r['note']}")  # fmt: skip
    ratio = report["ratio"]
    print(f"\nfive at once / slowest single: median {ratio['median']:.2f}"
          f" (min {ratio['min']:.2f}, max {ratio['max']:.2f});"
          f" ideal 1.00, sequential would be {ratio['sequential_median']:.2f} (sum of singles / slowest)")  # fmt: skip


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="repeats; the table shows medians (default 3)",
    )
    parser.add_argument(
        "--json", type=Path, help="also write every figure to this file"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    started = time.perf_counter()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server: ThrottledServer | None = None
    try:
        print("making media ...", flush=True)
        media = make_media()
        server = ThrottledServer(media)
        bench = Bench(server, scratch)
        bench.ingest(
            [server.url("fresh", media[0])]
        )  # warm-up: imports, first PyAV/Pillow use
        repeats: list[dict[str, Any]] = []
        for number in range(1, args.repeat + 1):
            if time.perf_counter() - started > TIME_BUDGET:
                print(
                    f"time budget of {TIME_BUDGET:g} s spent: stopping after {len(repeats)} repeats",
                    flush=True,
                )
                break
            repeats.append(one_repeat(bench, media, number))
            r = repeats[-1]
            print(f"repeat {number}: five at once {r['five_at_once']['wall']:.3f} s, slowest single "
                  f"{r['slowest_single']:.3f} s, ratio {r['ratio']:.2f}", flush=True)  # fmt: skip
    finally:
        if server:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    ratios = [r["ratio"] for r in repeats]
    report = {
        "machine": {
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "command": " ".join(
            ["python", "bench/ingest.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "repeats": len(repeats),
        "elapsed_s": time.perf_counter() - started,
        "files": [
            {
                "name": m.name,
                "kind": m.kind,
                "bytes": len(m.body),
                "rate": m.rate,
                "seconds": m.seconds,
            }
            for m in media
        ],
        "rows": summary(repeats, media),
        "ratio": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "sequential_median": statistics.median(
                r["sequential_ratio"] for r in repeats
            ),
        },
        "raw": repeats,
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
