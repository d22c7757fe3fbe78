"""Throughput and latency of the task API's create and query, against the framework's ceiling.

Usage:

    python bench/api.py [--duration S] [--concurrency 1,8,32,64] [--database-url URL] [--json out.json]
                        [--warmup S] [--rounds N] [--limits RATE] [--billing] [--s3]

Method
------
Two servers run side by side, each in its own process, on loopback ports:

* **ours**: the real service, ``python -m ref2video serve --port P`` (the same command as
  ``ref2video serve``) with ``REF2VIDEO_WORKERS=0``, so no engine runs and every task stays
  PENDING, and ``REF2VIDEO_DATA_DIR`` in a fresh temp dir (SQLite there by default, or a fresh
  PostgreSQL database made on ``--database-url`` and dropped afterwards). Its first start writes
  the API key the benchmark uses to ``<data_dir>/first-api-key.txt``.
* **ceiling**: a bare FastAPI app with the same routes (``POST /task/bailian/ref2video`` that
  reads a JSON body, ``GET /api/v1/tasks/{task_id}``), ``async def`` handlers that return a
  canned ``JSONResponse`` of about the same size as ours (ours builds ``JSONResponse`` too, so
  neither pays for response-model serialisation), served by ``uvicorn.run`` with the settings
  ``ref2video serve`` uses (single process, default loop and HTTP implementation, no access
  log). It is what the framework can do when the route does nothing.

The load generator runs in this process (never in a server's): a small HTTP/1.1 keep-alive client
on ``asyncio.open_connection``, one connection per concurrent worker, each worker sending its
next request as soon as the previous answer is read in full (closed loop). Both targets get
byte-identical requests (same headers, same key, same body, same task ids). For every point,
the connections are opened, warmed up for ``--warmup`` seconds, then measured for
``--duration`` seconds; each request's latency is taken with ``time.perf_counter`` from just
before the write to just after the last body byte. Throughput is completed requests divided by
the time from the start of the measurement to the last answer. p50/p99 are nearest-rank
percentiles. The CPU time of the client and of the server process (all threads, from
``/proc/PID/stat``) during the measurement is reported too: a client near 100% of a core would
mean the ceiling figure is a floor (the ratios then flatter ours). The server's CPU time per
request is the figure least disturbed by other load on the machine; the load average before and
after the run is recorded for the same reason.

Points run in this order: query for every concurrency (on a few hundred seeded tasks, so the
queue is short), then create for every concurrency; within a point the ceiling runs first, then
ours, ``--rounds`` times in turn, and the table shows the round with the median throughput.
After the creates, one more query point at the highest concurrency reads the newest tasks, which
by then sit behind every task created before them in the PENDING queue (row ``query@N``, N the
number of tasks, compared with the ordinary query ceiling).

With ``--limits RATE`` a third server, **limits**, runs beside them: ours again (its own data
dir and database) with every limit on and set so that it never refuses
(``rate_create_per_second`` and ``rate_query_per_second`` RATE, bursts RATE, and
``max_unfinished_tasks`` 1,000,000,000, so every create also counts the owner's unfinished tasks
under the owner's lock). It is measured after ours in every round, and a second table sets it
against ours: what the limits cost (docs/limits.md). RATE decides how often a PostgreSQL process
takes a lease from the shared bucket (every RATE x 0.05 requests, at most half of RATE); a RATE
near the throughput measured is the honest one.

With ``--billing`` (and ``--limits RATE``) a fourth server, **gateway**, is ours as an operator
charging customers runs it: billing on, the key's owner given an account with credit enough for
every create, and every limit on as with ``--limits``. A create then holds its largest cost in the
transaction that inserts the task (so it takes the full create path, not the grouped fast path);
a query reads the task's cost. It is set against ours in a table of its own.

With ``--s3`` one more server, **s3**, is ours on an S3-compatible bucket (moto's standalone
server, started on loopback for the run) handing out presigned links to it. Besides the points
above, both ours and s3 then also answer ``query-done``: queries of tasks that SUCCEEDED, whose
answer carries ``video_url`` (on ours a link the API signs, on s3 a link presigned for the bucket
with SigV4). The benchmark makes those tasks SUCCEEDED itself, through the queue's own claim and
succeed on each server's database, with a small file stored as each result (on the local disk or
in the bucket), so no engine runs. The ceiling's answer to ``query-done`` is its plain query.

Everything is bounded: fixed-duration points, a hard timeout per point and per server start,
loopback only; the servers are stopped and the temp dir (and PostgreSQL database) removed on the
way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import http.client
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

HOST = "127.0.0.1"
CREATE_PATH = "/task/bailian/ref2video"
QUERY_PATH = "/api/v1/tasks/{task_id}"
# Ours / ceiling in requests per second, by database (issue 13; the create p99 at 32
# connections is to stay under 50 ms as well).
TARGETS = {"sqlite": {"query": 0.5, "create": 0.4}, "postgresql": {"query": 0.4, "create": 0.3}}
SEED_TASKS = 200
START_TIMEOUT = 60.0
POINT_SLACK = 30.0  # a point taking this much longer than planned is a hung server

CREATE_BODY: dict[str, Any] = {
    "model": "wan2.6-r2v-flash",
    "input": {
        "prompt": "character1 walks along the beach at sunset while character2 follows, waves in the background",
        "negative_prompt": "blurry, low quality",
        "reference_urls": ["https://example.com/refs/role1.mp4", "https://example.com/refs/object.png"],
    },
    "parameters": {"size": "1280*720", "duration": 5, "audio": True, "shot_type": "multi",
                   "watermark": False},
}

# What the ceiling answers: the shapes (and about the sizes) of ours for a PENDING task.
CEILING_CREATED: dict[str, Any] = {
    "request_id": "183e6860-270f-47e8-a203-1a3524f0580d",
    "output": {"task_id": "aa62a600-3d6f-4890-ab3e-513631737e03", "task_status": "PENDING"},
}
CEILING_TASK_OUTPUT: dict[str, Any] = {
    "task_status": "PENDING", "submit_time": "2026-11-24 03:30:25.305", "progress": 0,
    "seed": 1380728274, "queue_position": 0,
}


# -- the ceiling server ----------------------------------------------------------------------


def ceiling_app() -> FastAPI:
    """A bare FastAPI app with the two routes, doing nothing but JSON in and out."""
    app = FastAPI()

    @app.post(CREATE_PATH)
    async def create(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse(CEILING_CREATED)

    @app.get(QUERY_PATH)
    async def query(task_id: str) -> JSONResponse:
        return JSONResponse({"request_id": CEILING_CREATED["request_id"],
                             "output": {"task_id": task_id, **CEILING_TASK_OUTPUT}})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_ceiling(port: int) -> None:
    """Serve the ceiling app as `ref2video serve` serves its own (see cli/main.py)."""
    import uvicorn

    uvicorn.run(ceiling_app(), host=HOST, port=port, log_level="warning", access_log=False)


# -- server processes ------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_process(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Server:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*argv, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = Server(name, port, process, log_path)
    wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Poll GET /health until it answers 200, or fail with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, server.port, timeout=2)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.1)
    tail = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{server.name} did not become ready on port {server.port}:\n{tail}")


def stop_process(server: Server) -> None:
    """SIGTERM (a graceful uvicorn shutdown), then SIGKILL after 15 s."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)


def start_ours(data_dir: Path, database_url: str | None, log_dir: Path, *, name: str = "ours",
               settings: dict[str, str] | None = None) -> Server:
    """Ours on `data_dir`, with `settings` (names as in docs/configuration.md) beside the bench's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REF2VIDEO_")}
    env.update(ours_env(data_dir, database_url, settings or {}))
    return start_process(name, [sys.executable, "-m", "ref2video", "serve"], env, log_dir)


def ours_env(data_dir: Path, database_url: str | None, settings: dict[str, str]) -> dict[str, str]:
    values = {"data_dir": str(data_dir), "workers": "0", "log_level": "warning", **settings}
    if database_url:
        values["database_url"] = database_url
    return {f"REF2VIDEO_{name.upper()}": value for name, value in values.items()}


def limit_settings(rate: float) -> dict[str, str]:
    """Every limit on at `rate` a second per key, set so that it never refuses."""
    burst = str(max(1, math.ceil(rate)))
    return {"rate_create_per_second": str(rate), "rate_create_burst": burst, "rate_query_per_second": str(rate),
            "rate_query_burst": burst, "max_unfinished_tasks": "1000000000"}


def open_account(data_dir: Path, database_url: str | None, credits: int) -> None:
    """Give the first key's owner an account with `credits`, through the operator's CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REF2VIDEO_")}
    env.update(ours_env(data_dir, database_url, {}))
    subprocess.run([sys.executable, "-m", "ref2video", "accounts", "create", "default", "--credit", str(credits)],
                   env=env, check=True, capture_output=True, timeout=START_TIMEOUT)


def start_ceiling(log_dir: Path) -> Server:
    argv = [sys.executable, os.path.abspath(__file__), "--serve-ceiling"]
    return start_process("ceiling", argv, dict(os.environ), log_dir)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- a fresh PostgreSQL database -------------------------------------------------------------


@contextlib.contextmanager
def fresh_postgres(url: str) -> Iterator[str]:
    """Create a uniquely named database on the server of `url`; yield its URL; drop it."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql")
    name = f"ref2video_bench_{uuid.uuid4().hex[:12]}"
    admin_dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a bucket, and tasks that succeeded --------------------------------------------------------


S3_ACCESS = {"s3_access_key_id": "bench", "s3_secret_access_key": "bench", "s3_region": "us-east-1"}


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on loopback for the run; yields the settings of a bucket on it."""
    port = free_port()
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    with open(log_dir / "s3.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://{HOST}:{port}"
        settings = {"storage": "s3", "s3_bucket": "bench", "s3_endpoint_url": url, **S3_ACCESS}
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                result_storage(settings, log_dir / "s3-setup").client.create_bucket(Bucket="bench")
                break
            except Exception as exc:  # not listening yet (botocore wraps the refusal in its own errors)
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (log_dir / "s3.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"moto's S3 server did not start:\n{log}") from exc
                time.sleep(0.1)
        yield settings
    finally:
        server = Server("s3", port, process, log_dir / "s3.log")
        stop_process(server)


def result_storage(settings: dict[str, str], data_dir: Path) -> Any:
    """The storage a server on `data_dir` with `settings` keeps its results in (storage/setup.py)."""
    from ref2video.config import Settings
    from ref2video.storage.setup import storages_from_settings

    values: dict[str, Any] = {"data_dir": data_dir, **settings}
    return storages_from_settings(Settings(**values), secret="unused")[0]


def finish_tasks(database_url: str, data_dir: Path, settings: dict[str, str], count: int) -> None:
    """Make `count` PENDING tasks SUCCEEDED through the queue's own claim and succeed, each
    with a small result file stored where the server on `data_dir` keeps its results."""
    from ref2video.queue.manager import QueueManager
    from ref2video.store.db import make_engine

    storage = result_storage(settings, data_dir)
    video = data_dir / "bench-result.mp4"
    video.write_bytes(b"\x00" * 4096)
    db = make_engine(database_url)
    try:
        manager = QueueManager(db)
        models = [CREATE_BODY["model"]]
        for _ in range(count):
            claim = manager.claim(models)
            if claim is None:
                raise RuntimeError("fewer PENDING tasks than were seeded")
            key = f"{claim.task.id}-bench.mp4"
            storage.put(key, video)
            usage = {"duration": 5, "input_video_duration": 0, "output_video_duration": 5, "video_count": 1,
                     "SR": 720, "size": "1280*720"}
            if manager.succeed(claim, result_key=key, usage=usage, engine="bench") is None:
                raise RuntimeError(f"task {claim.task.id} could not be finished")
    finally:
        db.dispose()


# -- the load generator ----------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 keep-alive connection; answers must carry Content-Length (uvicorn's do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; return (status, body)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = _content_length(head)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _content_length(head: bytes) -> int:
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
    end = head.find(b"\r\n", start + 2)
    return int(head[start + 17:end])


def http_request(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    """The exact bytes of one request; identical for both targets."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {key}",
             "Accept: */*", "User-Agent: ref2video-bench"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclasses.dataclass
class Tally:
    """What the workers of one phase record."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    last_error: str = ""


async def worker(conn: Connection, requests: Sequence[bytes], offset: int, deadline: float,
                 tally: Tally | None) -> None:
    """Send requests back to back until `deadline`; record latencies into `tally` if given."""
    clock = time.perf_counter
    i = offset
    while clock() < deadline:
        raw = requests[i % len(requests)]
        i += 1
        started = clock()
        status, body = await conn.request(raw)
        if tally is None:
            continue
        tally.latencies.append(clock() - started)
        if status != 200:
            tally.errors += 1
            tally.last_error = f"HTTP {status}: {body[:200]!r}"


@dataclasses.dataclass
class Point:
    target: str
    op: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu: float  # fraction of one core
    server_cpu: float  # fraction of one core, all the server's threads
    server_cpu_us: float  # server CPU time per request, microseconds
    last_error: str = ""
    round: int = 0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def run_point(server: Server, op: str, requests: Sequence[bytes], concurrency: int,
                    warmup: float, duration: float) -> Point:
    """Warm up, then measure `concurrency` closed-loop workers for `duration` seconds."""
    conns = [await Connection.open(server.port) for _ in range(concurrency)]
    offsets = [i * len(requests) // concurrency for i in range(concurrency)]
    try:
        await _phase(conns, requests, offsets, warmup, None)
        tally = Tally()
        cpu0, client0, t0 = cpu_seconds(server.process.pid), time.process_time(), time.perf_counter()
        await _phase(conns, requests, offsets, duration, tally)
        elapsed = time.perf_counter() - t0
        client_cpu = (time.process_time() - client0) / elapsed
        server_seconds = cpu_seconds(server.process.pid) - cpu0
    finally:
        for conn in conns:
            await conn.close()
    lat = sorted(tally.latencies)
    return Point(
        target=server.name, op=op, concurrency=concurrency, requests=len(lat), errors=tally.errors,
        seconds=round(elapsed, 3), rps=len(lat) / elapsed, p50_ms=percentile(lat, 50) * 1000,
        p99_ms=percentile(lat, 99) * 1000, client_cpu=client_cpu, server_cpu=server_seconds / elapsed,
        server_cpu_us=server_seconds / max(1, len(lat)) * 1e6, last_error=tally.last_error,
    )


async def _phase(conns: Sequence[Connection], requests: Sequence[bytes], offsets: Sequence[int],
                 seconds: float, tally: Tally | None) -> None:
    deadline = time.perf_counter() + seconds
    jobs = [worker(c, requests, o, deadline, tally) for c, o in zip(conns, offsets, strict=True)]
    await asyncio.wait_for(asyncio.gather(*jobs), seconds + POINT_SLACK)


async def seed_tasks(server: Server, key: str, count: int) -> list[str]:
    """Create `count` tasks on ours, one after another; return their ids."""
    conn = await Connection.open(server.port)
    raw = http_request("POST", CREATE_PATH, key, json.dumps(CREATE_BODY).encode())
    ids = []
    try:
        for _ in range(count):
            status, body = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"seeding a task failed: HTTP {status}: {body[:300]!r}")
            ids.append(json.loads(body)["output"]["task_id"])
    finally:
        await conn.close()
    return ids


async def newest_tasks(server: Server, key: str) -> tuple[list[str], int]:
    """Ids of the 100 newest tasks, and how many tasks there are."""
    conn = await Connection.open(server.port)
    try:
        status, body = await conn.request(http_request("GET", "/api/v1/tasks?page_size=100", key))
    finally:
        await conn.close()
    if status != 200:
        raise RuntimeError(f"listing tasks failed: HTTP {status}: {body[:300]!r}")
    page = json.loads(body)
    return [t["task_id"] for t in page["data"]], page["total"]


def query_requests(key: str, task_ids: Sequence[str]) -> list[bytes]:
    ids = list(task_ids)
    random.Random(0).shuffle(ids)
    return [http_request("GET", QUERY_PATH.format(task_id=t), key) for t in ids]


# -- the run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    duration: float
    warmup: float
    rounds: int
    concurrency: list[int]
    database_url: str | None
    json_path: Path | None
    limits: float | None = None
    billing: bool = False
    s3: bool = False


async def measure(ours: Server, ceiling: Server, key: str, opts: Options,
                  extras: Sequence[tuple[Server, str]] = (),
                  finish: dict[str, Callable[[], None]] | None = None) -> tuple[list[Point], int]:
    """Every point, ceiling then ours then each of `extras` (their servers and keys); with
    `finish` (server name -> how to make its seeded tasks SUCCEEDED), the query-done points
    first. Returns the points and the final number of tasks on ours."""
    points: list[Point] = []
    keys = {ours.name: key, ceiling.name: key, **{server.name: k for server, k in extras}}
    others = tuple(server for server, _ in extras)

    async def pair(op: str, requests: Mapping[str, Sequence[bytes]], c: int, targets: Sequence[Server]) -> None:
        for round_no in range(opts.rounds):
            for server in targets:
                point = await run_point(server, op, requests[server.name], c, opts.warmup, opts.duration)
                point.round = round_no
                points.append(point)
                print(_progress_line(point), file=sys.stderr, flush=True)

    if finish:
        done_on = [server for server in (ours, *others) if server.name in finish]
        done = {ceiling.name: query_requests(key, [str(uuid.uuid4()) for _ in range(SEED_TASKS)])}
        for server in done_on:
            ids = await seed_tasks(server, keys[server.name], SEED_TASKS)
            await asyncio.to_thread(finish[server.name])
            done[server.name] = query_requests(keys[server.name], ids)
        for c in opts.concurrency:
            await pair("query-done", done, c, (ceiling, *done_on))
    each: dict[str, Sequence[bytes]] = {}
    for server in (ours, *others):
        each[server.name] = query_requests(keys[server.name], await seed_tasks(server, keys[server.name], SEED_TASKS))
    each[ceiling.name] = each[ours.name]
    for c in opts.concurrency:
        await pair("query", each, c, (ceiling, ours, *others))
    creates = {name: [http_request("POST", CREATE_PATH, k, json.dumps(CREATE_BODY).encode())]
               for name, k in keys.items()}
    for c in opts.concurrency:
        await pair("create", creates, c, (ceiling, ours, *others))
    newest, total = await newest_tasks(ours, key)
    latest = {ours.name: query_requests(key, newest)}
    for server in others:
        latest[server.name] = query_requests(keys[server.name], (await newest_tasks(server, keys[server.name]))[0])
    await pair(f"query@{total}", latest, max(opts.concurrency), (ours, *others))
    return points, total


def _progress_line(p: Point) -> str:
    error = f"\n    last error: {p.last_error}" if p.errors else ""
    return (f"  {p.op:>12} c={p.concurrency:<3} {p.target:<7} {p.rps:8.0f} req/s  "
            f"p50 {p.p50_ms:7.2f} ms  p99 {p.p99_ms:7.2f} ms  errors {p.errors}  "
            f"client cpu {p.client_cpu:4.0%}  server cpu {p.server_cpu:4.0%} "
            f"({p.server_cpu_us:.0f} us/req){error}")


def run(opts: Options) -> dict[str, Any]:
    """Start the servers, measure, stop them, clean up; return the report."""
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ref2video-bench-"))
    servers: list[Server] = []
    try:
        with contextlib.ExitStack() as stack:
            def database(data_dir: Path) -> tuple[str | None, str]:
                """A fresh database for one server: (the URL it is given, the URL it ends up on)."""
                if opts.database_url:
                    url = stack.enter_context(fresh_postgres(opts.database_url))
                    return url, url
                return None, f"sqlite:///{data_dir / 'ref2video.db'}"

            variants: list[tuple[str, dict[str, str]]] = [("ours", {})]
            if opts.limits:
                variants.append(("limits", limit_settings(opts.limits)))
            if opts.billing:
                assert opts.limits
                variants.append(("gateway", {**limit_settings(opts.limits), "billing": "true"}))
            if opts.s3:
                variants.append(("s3", stack.enter_context(s3_server(workdir))))
            try:
                servers.append(start_ceiling(workdir))
                keys: dict[str, str] = {}
                finish: dict[str, Callable[[], None]] = {}
                for name, settings in variants:
                    data_dir = workdir / f"data-{name}"
                    given, url = database(data_dir)
                    servers.append(start_ours(data_dir, given, workdir, name=name, settings=settings))
                    keys[name] = (data_dir / "first-api-key.txt").read_text().strip()
                    if settings.get("billing"):
                        open_account(data_dir, given, credits=10**12)
                    if opts.s3 and name in ("ours", "s3"):
                        finish[name] = functools.partial(finish_tasks, url, data_dir, settings, SEED_TASKS)
                ours = servers[1]
                extras = [(server, keys[server.name]) for server in servers[2:]]
                points, total = _run_loop(ours, servers[0], keys["ours"], opts, extras, finish)
            finally:
                for server in servers:
                    stop_process(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "settings": _settings(opts), "tasks_at_end": total,
            "points": [dataclasses.asdict(p) for p in points]}


def _run_loop(ours: Server, ceiling: Server, key: str, opts: Options, extras: Sequence[tuple[Server, str]],
              finish: dict[str, Callable[[], None]]) -> tuple[list[Point], int]:
    loop_name = "asyncio"
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.Runner()
    print(f"client loop: {loop_name}; ours on :{ours.port}, ceiling on :{ceiling.port}", file=sys.stderr)
    with runner:
        return runner.run(measure(ours, ceiling, key, opts, extras, finish))


def _settings(opts: Options) -> dict[str, Any]:
    return {"duration_s": opts.duration, "warmup_s": opts.warmup, "rounds": opts.rounds,
            "concurrency": opts.concurrency, "limits_rate": opts.limits, "billing": opts.billing, "s3": opts.s3,
            "database": "postgresql" if opts.database_url else "sqlite", "seeded_tasks": SEED_TASKS}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "psycopg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.date.today().isoformat(),
            "commit": source_commit(), **versions}


def source_commit() -> str:
    """The repository's HEAD, with "+changes" when the work tree differs from it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# -- the report ------------------------------------------------------------------------------


def medians(points: Sequence[Point]) -> list[Point]:
    """Of the rounds of each (target, op, concurrency), the one with the median throughput."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.target, p.op, p.concurrency), []).append(p)
    return [sorted(g, key=lambda p: p.rps)[(len(g) - 1) // 2] for g in groups.values()]


def table(points: Sequence[Point], database: str = "sqlite", target: str = "ours") -> str:
    """A Markdown table: one row per (op, concurrency), `target` (ours) against the ceiling."""
    targets = TARGETS[database]
    points = medians(points)
    ceilings = {(p.op, p.concurrency): p for p in points if p.target == "ceiling"}
    header = (f"| op | conc | ceiling req/s | {target} req/s | ratio | target | ceiling p50 / p99 ms "
              f"| {target} p50 / p99 ms | server CPU µs/req (ceil / {target}) | CPU ratio "
              f"| client CPU (ceil / {target}) | errors (ceil / {target}) |")
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        if p.target != target:
            continue
        base_op = p.op.split("@")[0]
        ceil = ceilings.get((p.op, p.concurrency)) or ceilings.get((base_op, p.concurrency))
        assert ceil is not None
        ratio = p.rps / ceil.rps if ceil.rps else float("nan")
        cpu_ratio = ceil.server_cpu_us / p.server_cpu_us if p.server_cpu_us else float("nan")
        rows.append(
            f"| {p.op} | {p.concurrency} | {ceil.rps:,.0f} | {p.rps:,.0f} | {ratio:.2f} "
            f"| {_target(targets.get(base_op))} | {ceil.p50_ms:.2f} / {ceil.p99_ms:.2f} "
            f"| {p.p50_ms:.2f} / {p.p99_ms:.2f} | {ceil.server_cpu_us:.0f} / {p.server_cpu_us:.0f} "
            f"| {cpu_ratio:.2f} | {ceil.client_cpu:.0%} / {p.client_cpu:.0%} | {ceil.errors} / {p.errors} |"
        )
    return "\n".join(rows)


def _target(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def versus_table(points: Sequence[Point], target: str, base: str = "ours") -> str:
    """A Markdown table: `target` (ours with limits, billing or a bucket) against `base`, per
    (op, concurrency); the CPU cost is what `target` spends per request beyond `base`."""
    points = medians(points)
    plain = {(p.op, p.concurrency): p for p in points if p.target == base}
    rows = [f"| op | conc | {base} req/s | {target} req/s | ratio | {base} p50 / p99 ms | {target} p50 / p99 ms "
            f"| server CPU µs/req ({base} / {target}) | CPU cost | errors ({target}) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        other = plain.get((p.op, p.concurrency))
        if p.target != target or other is None:
            continue
        cost = p.server_cpu_us / other.server_cpu_us - 1 if other.server_cpu_us else float("nan")
        rows.append(
            f"| {p.op} | {p.concurrency} | {other.rps:,.0f} | {p.rps:,.0f} | {p.rps / other.rps:.2f} "
            f"| {other.p50_ms:.2f} / {other.p99_ms:.2f} | {p.p50_ms:.2f} / {p.p99_ms:.2f} "
            f"| {other.server_cpu_us:.0f} / {p.server_cpu_us:.0f} | {cost:+.0%} | {p.errors} |"
        )
    return "\n".join(rows)


def points_of(report: dict[str, Any]) -> list[Point]:
    return [Point(**p) for p in report["points"]]


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, int | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per point (4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point (1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every point this many times, ceiling and ours in turn; "
                             "the table shows the median round (1)")
    parser.add_argument("--concurrency", default="1,8,32,64",
                        help="comma-separated connection counts (1,8,32,64)")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server URL; a fresh database is made on it and dropped")
    parser.add_argument("--limits", type=float, default=None, metavar="RATE",
                        help="also measure ours with every limit on at RATE a second per key (never refusing)")
    parser.add_argument("--billing", action="store_true",
                        help="also measure ours with billing on and every limit on at --limits RATE")
    parser.add_argument("--s3", action="store_true",
                        help="also measure ours on an S3 bucket with presigned links, and queries of succeeded tasks")
    parser.add_argument("--json", type=Path, default=None, dest="json_path", help="also write the report here")
    parser.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrency or min(concurrency) < 1 or max(concurrency) > 512:
        parser.error("--concurrency takes numbers from 1 to 512")
    if not 0.1 <= args.duration <= 120 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 9:
        parser.error("--duration must be 0.1-120 s, --warmup 0-60 s and --rounds 1-9")
    if args.limits is not None and not 1 <= args.limits <= 1e7:
        parser.error("--limits takes a rate from 1 to 10000000 a second")
    if args.billing and args.limits is None:
        parser.error("--billing measures billing with the limits on: give --limits RATE too")
    opts = Options(args.duration, args.warmup, args.rounds, concurrency, args.database_url, args.json_path,
                   args.limits, args.billing, args.s3)
    return opts, (args.port if args.serve_ceiling else None)


def main(argv: Sequence[str] | None = None) -> None:
    opts, ceiling_port = parse_args(argv)
    if ceiling_port is not None:
        serve_ceiling(ceiling_port)
        return
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped and the temp files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    report = run(opts)
    m = report["machine"]
    print(f"\n{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['date']}, commit {m['commit']}; "
          f"database {report['settings']['database']}; {opts.duration:g} s per point after "
          f"{opts.warmup:g} s warm-up, median of {opts.rounds} round(s); "
          f"{report['tasks_at_end']} tasks in the table at the end; "
          f"load average {m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after\n")
    points = points_of(report)
    print(table(points, report["settings"]["database"]))
    if opts.limits:
        print(f"\nWith limits on (rate and burst {opts.limits:g} a second per key, "
              "the unfinished-task quota counted):\n")
        print(versus_table(points, "limits"))
    if opts.billing:
        print("\nWith billing on as well (a hold at every create, the cost in every answer):\n")
        print(versus_table(points, "gateway"))
    if opts.s3:
        print("\nOn an S3 bucket, with presigned links (query-done: tasks that succeeded):\n")
        print(versus_table(points, "s3"))
        print("\nThe same against the ceiling:\n")
        print(table(points, report["settings"]["database"], target="s3"))
    if opts.json_path:
        opts.json_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; servers stopped and temp files removed")
