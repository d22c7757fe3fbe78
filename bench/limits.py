"""What rate limits and quotas cost a request, in-process, against what a query costs.

Usage:

    python bench/limits.py [--database-url postgresql://...] [--seconds S]

Measured, each for about `--seconds` seconds, one thread, on a fresh database (SQLite in a temp
dir, or a fresh PostgreSQL database made on `--database-url` and dropped afterwards):

* **query**: `app.tasks.get` of a PENDING task, the database work of one task query (the
  route adds authentication, JSON and HTTP, so a query costs more than this over the wire);
* **admit (no limit)**: `Limits.admit_now` with limits off, what every request pays by default;
* **admit (local)**: a limit on, SQLite's in-process bucket;
* **admit (shared, lease N)**: a limit on, PostgreSQL's shared bucket, leasing N tokens at a
  time (N = rate x `rate_limit_lease`), including the statements (one per N requests);
* **lease statement**: one `take_tokens` on the shared bucket (PostgreSQL);
* **create** and **create + quota (M unfinished)**: `app.tasks.create` without and with the
  unfinished-task quota (its lock and count in the create's transaction), the owner having M
  unfinished tasks (and a few more by the end: each call makes one), measured in alternating
  slices so both see the same load; the quota's row says what it adds to a create.

Numbers are microseconds per call (mean), and each limit's share of a query (of a create for the
quota).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import fresh_postgres  # noqa: E402

from ref2video.app import tasks  # noqa: E402
from ref2video.app.limits import QUERY, Limits, Rate, lease_size  # noqa: E402
from ref2video.spec import TaskSpec  # noqa: E402
from ref2video.store import limits as limit_store  # noqa: E402
from ref2video.store.db import is_postgres, make_engine, migrate  # noqa: E402
from ref2video.store.keys import Principal  # noqa: E402

RETENTION_MS = 86_400_000


def paired(a: Callable[[], object], b: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Mean microseconds of `a()` and of `b()`, called in alternating slices for about `seconds`."""
    spent, calls = [0.0, 0.0], 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for i, fn in enumerate((a, b)):
            start = time.perf_counter()
            for _ in range(5):
                fn()
            spent[i] += time.perf_counter() - start
        calls += 5
    return spent[0] / calls * 1e6, spent[1] / calls * 1e6


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Mean microseconds of `fn()`, called for about `seconds`."""
    for _ in range(50):
        fn()
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        calls += 20
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / calls * 1e6


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        with fresh_postgres(url) as fresh:
            yield fresh
        return
    with tempfile.TemporaryDirectory(prefix="ref2video-bench-limits-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'db.sqlite'}"


def run(url: str | None, seconds: float) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with database(url) as db_url:
        db = make_engine(db_url)
        migrate(db)
        try:
            principal = Principal("bench", "owner")
            spec = TaskSpec(model="wan2.6-r2v-flash", prompt="x", reference_urls=("https://example.com/a.png",))
            task = tasks.create(db, spec, principal, retention_ms=RETENTION_MS)
            rows.append(("query", per_call(lambda: tasks.get(db, principal, task.id, retention_ms=RETENTION_MS),
                                           seconds)))
            off = Limits(db)
            rows.append(("admit (no limit)", per_call(lambda: off.admit_now(QUERY, "k"), seconds)))
            if is_postgres(db):
                for rate in (20.0, 200.0, 2000.0, 20000.0):
                    # A huge burst, so nothing is ever refused: every call is admitted.
                    limits = Limits(db, query=Rate.of(rate, 10**9), lease_seconds=0.05)

                    def admit(limits: Limits = limits) -> None:
                        if not limits.admit_now(QUERY, "k"):
                            limits.admit(QUERY, "k")

                    want = lease_size(Rate.of(rate, 10**9), 0.05)
                    rows.append((f"admit (shared, lease {want})", per_call(admit, seconds)))
                with db.connect() as conn:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    limit_store.add_bucket(conn, "bench", 10**9, int(time.time() * 1000))
                    rows.append(("lease statement", per_call(lambda: limit_store.take_tokens(
                        conn, "bench", rate_per_ms=1.0, burst=10**9, want=1, now_ms=int(time.time() * 1000)),
                        seconds)))
            else:
                local = Limits(db, query=Rate.of(10**9, 10**9))
                rows.append(("admit (local)", per_call(lambda: local.admit_now(QUERY, "k"), seconds)))
            made = 1
            for pending in (10, 100, 1000):
                while made < pending:
                    tasks.create(db, spec, principal, retention_ms=RETENTION_MS)
                    made += 1
                plain, quota = paired(
                    lambda: tasks.create(db, spec, principal, retention_ms=RETENTION_MS),
                    lambda: tasks.create(db, spec, principal, retention_ms=RETENTION_MS, max_unfinished=10**9),
                    seconds)
                made = pending + int(2 * seconds * 1e6 / (plain + quota)) + 1
                rows.append((f"create ({pending} unfinished)", plain))
                rows.append((f"create + quota ({pending} unfinished)", quota))
        finally:
            db.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (2)")
    args = parser.parse_args()
    rows = run(args.database_url, args.seconds)
    query = rows[0][1]
    print(f"database {'postgresql' if args.database_url else 'sqlite'}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| what | µs per call | share of a query |\n|---|---:|---:|")
    create = query
    for name, micros in rows:
        if name.startswith("create ("):
            create = micros
            print(f"| {name} | {micros:,.1f} | |")
        elif name.startswith("create + quota"):
            print(f"| {name} | {micros:,.1f} | {micros / create - 1:+.1%} of a create |")
        else:
            print(f"| {name} | {micros:,.1f} | {micros / query:.1%} |")


if __name__ == "__main__":
    main()
