"""The engine interfaces: small, and free of HTTP and SQL (docs/design.md).

There are two kinds of engine, and both declare `capacity`, how many tasks one process runs at
once with it (the preview engine a few, a GPU engine one per device, the relay thousands). A
process claims a task of a model only while that model's engine has room.

**Threaded engines** (`Engine`) run one task per worker thread. An engine is any object with a
`name`, a `load()` called once before first use, and `generate(request, context) ->
GenerationResult`. It reports progress with
`context.report_step(i, total)`, checks `context.should_cancel()` (or calls
`context.raise_if_canceled()`) between steps, writes its output below `request.scratch_dir`,
and raises `ref2video.errors.EngineError` (or `RetryableEngineError`) to fail.

    class Solid:
        name = "solid"
        def load(self) -> None: ...
        def generate(self, request, context):
            for i in range(10):
                context.raise_if_canceled()
                context.report_step(i + 1, 10)
            return GenerationResult(video_path=request.scratch_dir / "out.mp4", ...)

The worker that runs it writes the outcome (`ref2video.app.transitions`): a result is stored and
the task succeeds, an `EngineError` fails it, a `RetryableEngineError` gives it back.

**Held engines** (`HeldEngine`) hold many tasks without a thread each: the relay, whose tasks
spend minutes at the provider and almost no time here. The process starts one with a `Journal`,
its only way to the task table: it claims through it while it has room (`capacity` tasks held),
renews every lease it holds in one call, and ends each task with one of the journal's verbs,
which are the same compare-and-set transitions the workers use. A verb that ends a task returns
the state the task ended in, or None when it was no longer held (its lease lapsed and another
process took it over); the engine must then forget it. On `stop(grace)` it hands every task it
still holds back (`release_all`), so another process carries on from what was recorded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..protocol import Status
from ..spec import TaskSpec
from ..storage.base import Storage

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "JobContext", "HeldEngine", "HeldTask", "Journal",
           "EngineHost", "Member", "capacity_of"]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What an engine is asked to make: the checked request, and its media fetched and checked
    (`ref2video.media.Reference`s). `references[N - 1]` is what the prompt calls characterN
    (`spec.prompt_with_character_names()` writes the media form's names so too); the media
    form may add a `first_frame` to open on and a voice per reference number."""

    task_id: str
    spec: TaskSpec
    scratch_dir: Path
    attempt: int = 1
    references: tuple[Any, ...] = ()
    first_frame: Any | None = None
    voices: Mapping[int, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """A finished video file and the facts usage is computed from."""

    video_path: Path
    output_seconds: int
    input_video_seconds: float = 0.0
    has_audio: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class JobContext(Protocol):
    """What a running engine may ask of the worker."""

    def report_step(self, step: int, total: int) -> None: ...

    def should_cancel(self) -> bool: ...

    def raise_if_canceled(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    name: str

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult: ...


def capacity_of(engine: object, default: int) -> int:
    """The tasks one process runs at once with `engine`: its `capacity`, else `default`."""
    value = getattr(engine, "capacity", None)
    return int(value) if isinstance(value, int) and value > 0 else default


@dataclasses.dataclass(frozen=True)
class HeldTask:
    """A task claimed by a held engine: what it needs to carry on from where the task was left
    (the provider's task it was sent as, for an engine that relays)."""

    id: str
    owner: str
    model: str
    spec: dict[str, Any]
    attempt: int
    cancel_requested: bool
    upstream_id: str | None = None
    upstream_account: str | None = None
    upstream_submit_at: int | None = None
    upstream_status: str | None = None
    upstream_adopted: bool = False


@dataclasses.dataclass(frozen=True)
class Member:
    """A relay process live on a provider account, with the rates it was configured with for it."""

    process: str
    account: str
    query_rate: float
    submit_rate: float


class Journal(Protocol):
    """A held engine's way to the task table, under the one lease token of its process."""

    lease_seconds: float

    def claim(self, models: Collection[str]) -> HeldTask | None: ...

    def subscribe(self) -> threading.Event:
        """An event set when new work may be claimable (a create, a requeue)."""
        ...

    def renew(self) -> int: ...

    def held(self) -> set[str]: ...

    def cancel_requests(self) -> set[str]: ...

    def release(self, task_id: str) -> bool: ...

    def release_all(self) -> int: ...

    # the provider's task: the intent before a submit leaves, the id after it is answered
    def intend(self, task_id: str, account: str) -> int | None: ...

    def clear_intent(self, task_id: str) -> bool: ...

    def record(self, task_id: str, upstream_id: str, status: str, *, adopted: bool = False) -> bool: ...

    def set_status(self, statuses: dict[str, str]) -> None: ...

    def recorded(self, upstream_ids: Sequence[str]) -> set[str]: ...

    def siblings(self, task_id: str, account: str, model: str, start_ms: int, end_ms: int) -> int: ...

    # the processes sharing the provider's accounts (their rate limits hold across them)
    def announce(self, rates: Mapping[str, tuple[float, float]], live_seconds: float, *,
                 joining: bool) -> tuple[str, list[Member]]:
        """Mark this process live for `live_seconds` on each account of `rates` (account -> its
        query and submit rates); return its own name and every live member of those accounts,
        itself included. `joining`: processes joining at once see each other."""
        ...

    def leave(self, linger_seconds: float) -> None:
        """This process stops speaking for its accounts; others count it `linger_seconds` more."""
        ...

    # the end of a task
    def succeed(self, task_id: str, *, result_key: str, usage: dict[str, Any]) -> Status | None: ...

    def fail(self, task_id: str, code: str, message: str) -> Status | None: ...

    def canceled(self, task_id: str) -> Status | None: ...

    def retry(self, task: HeldTask, code: str, message: str, delay: float = 0.0) -> Status | None: ...


class EngineHost(Protocol):
    """What the process lends a held engine besides its journal."""

    journal: Journal
    storage: Storage  # where results are kept

    def own_upload(self, owner: str, key: str) -> Path | None:
        """The owner's uploaded file under `key` (an `oss://` reference), or None."""
        ...


@runtime_checkable
class HeldEngine(Protocol):
    name: str
    capacity: int
    models: Mapping[str, str]  # the models it serves -> their names where it sends them

    def start(self, host: EngineHost) -> None: ...

    def stop(self, grace: float) -> None: ...
