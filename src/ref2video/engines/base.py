"""The engine interfaces: small, and free of HTTP and SQL (docs/design.md).

There are two kinds of engine, and both declare `capacity`, how many tasks one process runs at
once with it (the preview engine a few, a GPU engine one per device, the relay thousands). The
operator may override it (`engine_capacity`); the registry's figure (`EngineGroup.capacity`)
is the one a process goes by. A process claims a task of a model only while that model's
engine has room.

**Threaded engines** (`Engine`) run one task per worker thread, as many threads as their
capacity. An engine is any object with a `name`, a `load()` called once before first use, and
`generate(request, context) -> GenerationResult`; `capacity` may be left out at run time (such
an engine runs `workers` tasks at once). It reports progress with
`context.report_step(i, total)`, checks `context.should_cancel()` (or calls
`context.raise_if_canceled()`) between steps, writes its output below `request.scratch_dir`,
and raises `ref2video.errors.EngineError` (or `RetryableEngineError`) to fail.

    class Solid:
        name = "solid"
        capacity = 2
        def load(self) -> None: ...
        def generate(self, request, context):
            for i in range(10):
                context.raise_if_canceled()
                context.report_step(i + 1, 10)
            return GenerationResult(video_path=request.scratch_dir / "out.mp4", ...)

The worker that runs it writes the outcome (`ref2video.app.transitions`): a result is stored and
the task succeeds, an `EngineError` fails it, a `RetryableEngineError` gives it back.

**Held engines** (`HeldEngine`) hold many tasks without a thread each: the relay, whose tasks
spend minutes at the provider and almost no time here. The process starts one with an
`EngineHost`; its `journal` is the engine's only way to the task table. The engine's duties:

- **Claim only below `host.capacity`** (the registry's figure, not its own `capacity`), and
  count a task as held until the verb that ends it has returned.
- **Call the journal off its event loop.** Every journal call blocks (it runs SQL, and may
  wait for the database), so an engine with an event loop calls them from a thread
  (`loop.run_in_executor`), never on the loop.
- **Renew** every lease it holds (`renew()`, one call for all of them) well within
  `journal.lease_seconds`: a lease not renewed in that time lapses, the reaper gives the task
  back to the queue and another process takes it over. The relay renews every third of it.
- **Honour cancel requests.** `cancel_requests()` names the held tasks whose owner asked for a
  cancel; the engine looks about once a second and ends each such task with `canceled()` as
  soon as it can (the relay first asks the provider, which cancels only what has not started).
  The owner was told the cancel was accepted: see `transitions.cancel`.
- **End each task with one of the journal's verbs**, the same compare-and-set transitions the
  workers use. A verb that ends a task returns the state the task ended in, or None when it was
  no longer held (its lease lapsed and another process took it over); the engine must then
  forget it.
- **On `stop(grace)`** hand every task it still holds back (`release_all`), so another process
  carries on from what was recorded.

It may also have an `in_flight: int` property, the tasks it holds now; `queue/held.py` reads
it (where present) for the process's running count (`/health`).

The journal here is what every held engine needs. An engine may ask more of its host's journal:
the relay's `engines.dashscope.journal.UpstreamJournal` adds the provider's side of a task.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeGuard, runtime_checkable

from ..protocol import Status
from ..spec import TaskSpec
from ..storage.base import Storage

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "JobContext", "HeldEngine", "HeldTask", "Journal",
           "EngineHost", "capacity_of", "is_engine"]


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


class Engine(Protocol):
    """A threaded engine. Not `runtime_checkable`: `capacity` may be missing at run time, so
    `is_engine` checks the rest of its shape."""

    name: str
    capacity: int  # tasks one process runs at once with it; without one, `workers`

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult: ...


def is_engine(obj: object) -> TypeGuard[Engine]:
    """Whether `obj` is a threaded engine: a `name`, `load()` and `generate()`."""
    return (isinstance(getattr(obj, "name", None), str) and callable(getattr(obj, "load", None))
            and callable(getattr(obj, "generate", None)))


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


class Journal(Protocol):
    """A held engine's way to the task table, under the one lease token of its process. Every
    call blocks (SQL): call it from a thread, not from an event loop."""

    lease_seconds: float  # a lease not renewed for this long lapses

    def claim(self, models: Collection[str]) -> HeldTask | None:
        """Take the oldest claimable task of one of `models` (RUNNING, under this journal's
        lease), or None when there is none."""
        ...

    def subscribe(self) -> threading.Event:
        """An event set when new work may be claimable (a create, a requeue)."""
        ...

    def renew(self) -> int:
        """Extend the lease of every task held, by `lease_seconds`; how many are held."""
        ...

    def held(self) -> set[str]:
        """The ids the table says are held under this lease (the engine's memory may differ
        after a stall: what it holds that the table does not is no longer its own)."""
        ...

    def cancel_requests(self) -> set[str]:
        """The held tasks whose owner asked for a cancel: the engine must end each CANCELED."""
        ...

    def release(self, task_id: str) -> bool:
        """Give a held task back to the queue without spending an attempt; False when it was
        no longer held."""
        ...

    def release_all(self) -> int:
        """Give every held task back (on stop); how many."""
        ...

    def succeed(self, task_id: str, *, result_key: str, usage: dict[str, Any]) -> Status | None:
        """The task succeeded with the result stored under `result_key`; it ends SUCCEEDED, or
        CANCELED if its owner's cancel was accepted meanwhile; None when no longer held."""
        ...

    def fail(self, task_id: str, code: str, message: str) -> Status | None:
        """The task failed with the error `code` (FAILED, or CANCELED as with `succeed`); None
        when no longer held."""
        ...

    def canceled(self, task_id: str) -> Status | None:
        """The task stopped on its owner's cancel; None when no longer held."""
        ...

    def retry(self, task: HeldTask, code: str, message: str, delay: float = 0.0) -> Status | None:
        """Give the task back to be tried again after `delay` seconds (PENDING), or fail it
        when its attempts are spent (FAILED); None when no longer held."""
        ...


class EngineHost(Protocol):
    """What the process lends a held engine besides its journal."""

    journal: Journal
    storage: Storage  # where results are kept
    # The most tasks the engine may hold at once in this process: the operator's
    # `engine_capacity` for it, else its own `capacity`. The engine claims only below it.
    capacity: int

    def own_upload(self, owner: str, key: str) -> Path | None:
        """The owner's uploaded file under `key` (an `oss://` reference), or None."""
        ...


@runtime_checkable
class HeldEngine(Protocol):
    """An engine that holds its tasks itself (the module's docstring says what it must do)."""

    name: str
    capacity: int  # its own default; `host.capacity` is the one it goes by
    models: Mapping[str, str]  # the models it serves -> their names where it sends them

    def start(self, host: EngineHost) -> None:
        """Start holding tasks (in threads of its own); returns at once."""
        ...

    def stop(self, grace: float) -> None:
        """Let work in progress finish for up to `grace` seconds, then give back what it holds."""
        ...
