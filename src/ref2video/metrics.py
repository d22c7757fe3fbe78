"""Prometheus metrics of one process: a leaf that imports only `prometheus_client`, so every
layer (engines, media, queue, app, api) may record into it. docs/observability.md lists them.

Multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` is set before this process imports
prometheus_client (the environment of `ref2video serve`/`worker`), every value is kept in a
file of that folder, and `exposition()` adds up the files of every process writing there, as
prometheus_client's multiprocess mode documents. The folder must be empty when the first
process starts (wipe it at deploy time), and each process marks itself dead when it stops.

What is read from the database at scrape time (tasks by state, queue depth) is not kept here:
it is a collector the caller passes to `exposition()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client import REGISTRY as _DEFAULT
from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE", "TRANSITIONS", "TASK_DURATION", "HTTP_DURATION", "RELAY_IN_FLIGHT", "PROVIDER_ANSWERS",
    "REFERENCE_FAILURES", "CREDITS_CHARGED", "multiprocess_dir", "exposition", "serve", "process_stopped",
    "Source", "Gauge",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

if _folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_folder, exist_ok=True)  # prometheus_client writes its files there from the first value

# Buckets of a task's run, from its claim to its end: seconds to an hour and a half.
_TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 2400, 5400, float("inf"))

TRANSITIONS = Counter(
    "ref2video_task_transitions", "Committed changes of a task's state, by the state it moved to", ["to"])
TASK_DURATION = Histogram(
    "ref2video_task_duration_seconds", "Seconds from a task's claim to its end, by engine and final state",
    ["engine", "status"], buckets=_TASK_BUCKETS)
HTTP_DURATION = Histogram(
    "ref2video_http_request_duration_seconds", "Seconds to answer an HTTP request, by route template and status",
    ["method", "route", "status"])
RELAY_IN_FLIGHT = Gauge(
    "ref2video_relay_tasks_in_flight", "Tasks the DashScope relay holds now", ["engine"],
    multiprocess_mode="livesum")
PROVIDER_ANSWERS = Counter(
    "ref2video_provider_responses", "Answers of the provider's API, by call and HTTP status (or the failure)",
    ["call", "status"])
REFERENCE_FAILURES = Counter(
    "ref2video_reference_fetch_failures", "Reference downloads that failed, by reason", ["reason"])
CREDITS_CHARGED = Counter(
    "ref2video_credits_charged_micro", "Micro-credits charged for succeeded tasks, by model", ["model"])


class Source(Protocol):
    """Something that yields metric families when scraped (a prometheus_client collector)."""

    def collect(self) -> Iterable[Metric]: ...


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Scrape:
    """What one scrape reads: this process's metrics (or every process's, in multiprocess
    mode) and the `extra` sources."""

    def __init__(self, extra: Iterable[Source]) -> None:
        self.extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            yield from registry.collect()
        else:
            yield from _DEFAULT.collect()
        for source in self.extra:
            yield from source.collect()


def exposition(*extra: Source) -> bytes:
    """The text exposition format of a scrape."""
    scrape: Any = _Scrape(extra)
    return generate_latest(scrape)


def serve(port: int, host: str, *extra: Source) -> None:
    """Serve the scrape on `host:port` (`/metrics`, or any path) from a daemon thread: a worker
    process, which serves no HTTP of its own."""
    scrape: Any = _Scrape(extra)
    start_http_server(port, host, registry=scrape)


def process_stopped() -> None:
    """In multiprocess mode, drop this process's live gauges (in-flight tasks) from the sums."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
