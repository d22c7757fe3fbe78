"""Workers: threads that claim tasks, run engines, store results and record the outcome.

One `WorkerPool` per process runs worker threads for its threaded engines, as many for each as
the engine's capacity, each claiming only that engine's models (so no engine ever runs more
tasks at once than it declared), and a lease keeper that renews the leases of running tasks
(and carries progress and cancel requests between them and the table).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engines.base import GenerationRequest
from ..engines.registry import EngineRegistry
from .. import logs
from ..errors import EngineError, RetryableEngineError, TaskCanceled
from ..protocol import Status
from ..references import TaskMedia
from ..spec import TaskSpec
from ..storage.base import Storage, StorageUnavailable
from ..usage import make_usage
from .context import TaskContext
from .manager import Claim, LeaseLost, QueueManager
from .wakeup import Wakeup

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

STORAGE_RETRY_DELAY = 10.0  # seconds before a task whose storage was unreachable is tried again


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """How a run ended: "succeed", "fail", "retry" or "canceled", with what to record."""

    kind: str
    code: str = ""
    message: str = ""
    result_key: str = ""
    usage: dict[str, Any] | None = None
    delay: float = 0.0


class WorkerPool:
    """Runs tasks from the queue until `stop()`.

    pool = WorkerPool(manager, registry, storage, wakeup, scratch_dir=Path("scratch"),
                      slots=[(["wan2.6-r2v"], 2)])   # models, and how many of their tasks at once
    pool.start(); ...; pool.stop(grace=10)
    """

    def __init__(
        self,
        manager: QueueManager,
        registry: EngineRegistry,
        storage: Storage,
        wakeup: Wakeup,
        *,
        scratch_dir: Path,
        slots: Sequence[tuple[Sequence[str], int]] = (),
        poll_interval: float = 5.0,
        load_references: Callable[[TaskSpec, str, Path, Callable[[], bool]], TaskMedia] | None = None,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.storage = storage
        self.wakeup = wakeup
        self.scratch_dir = Path(scratch_dir)
        self.slots = [(list(models), capacity) for models, capacity in slots if models and capacity > 0]
        self.size = sum(capacity for _, capacity in self.slots)
        self.poll_interval = poll_interval
        self.load_references = load_references or (lambda *_: TaskMedia(()))
        self._stopping = threading.Event()
        self._running: dict[str, TaskContext] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Renew well inside the lease, and look for cancel requests at least twice a second.
        self._tick = min(0.5, manager.lease_ms / 1000 / 4)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        if self.size:  # only workers wait for wake-ups; an API-only process need not listen
            self.wakeup.start_listening()
        targets: list[tuple[Callable[[], None], str]] = [
            (functools.partial(self._work, models), f"ref2video-worker-{n}-{i}")
            for n, (models, capacity) in enumerate(self.slots) for i in range(capacity)
        ]
        if self.size:
            targets.append((self._keep_leases, "ref2video-leases"))
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float = 10.0) -> None:
        """Let running tasks finish for `grace` seconds, then hand them back to the queue."""
        self._stopping.set()
        self.wakeup.stop()
        deadline = time.monotonic() + grace
        workers = [t for t in self._threads if t.name.startswith("ref2video-worker")]
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for context in self._running.values():
                context.shutting_down = True
        for thread in self._threads:
            thread.join(5.0)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # -- the worker loop -----------------------------------------------------------------

    def _idle(self, models: list[str]) -> float:
        """How long to wait for a notification before looking again: the fallback interval, or
        less when a retried task becomes claimable sooner."""
        try:
            due = self.manager.next_due(models)
        except Exception:
            log.exception("reading when the next retry is due failed")
            return self.poll_interval
        return self.poll_interval if due is None else min(self.poll_interval, max(0.01, due))

    def _work(self, models: list[str]) -> None:
        while not self._stopping.is_set():
            self.wakeup.clear()
            try:
                claim = self.manager.claim(models)
            except Exception:
                log.exception("claiming a task failed; retrying")
                self._stopping.wait(1.0)
                continue
            if claim is None:
                self.wakeup.wait(self._idle(models))
                continue
            with logs.task_context(claim.task.id):
                self._process(claim)

    def _process(self, claim: Claim) -> None:
        """Run one claimed task; exactly one outcome is written, in `finally`."""
        task = claim.task
        context = TaskContext(claim)
        scratch = self.scratch_dir / f"{task.id}-{claim.lease_token[:8]}"
        scratch.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._running[task.id] = context
        outcome = _Outcome("fail", "InternalError", "the task stopped unexpectedly")
        engine_name: str | None = None
        try:
            spec = TaskSpec.from_json(task.spec)
            engine = self.registry.get(task.model)
            engine_name = engine.name
            media = self.load_references(spec, task.owner, scratch / "references", context.should_cancel)
            context.raise_if_canceled()
            if media.first_frame is not None:  # the media form's ratio yields to the first frame's
                spec = spec.fitted_to(media.first_frame.width, media.first_frame.height)
            request = GenerationRequest(task.id, spec, scratch, attempt=task.attempt, references=media.references,
                                        first_frame=media.first_frame, voices=media.voices)
            result = engine.generate(request, context)
            context.raise_if_canceled()
            key = f"{task.id}-{claim.lease_token[:8]}.mp4"  # one file per attempt
            self.storage.put(key, result.video_path)
            outcome = _Outcome("succeed", result_key=key, usage=make_usage(spec, result))
        except TaskCanceled:
            outcome = _Outcome("canceled")
        except RetryableEngineError as exc:
            outcome = _Outcome("retry", exc.code, exc.message, delay=exc.delay)
        except StorageUnavailable as exc:  # the bucket is down or slow: try again later
            outcome = _Outcome("retry", "StorageUnavailable", exc.message, delay=STORAGE_RETRY_DELAY)
        except EngineError as exc:
            outcome = _Outcome("fail", exc.code, exc.message)
        except Exception as exc:
            log.exception("engine failed on task %s", task.id)
            outcome = _Outcome("fail", "InternalError", f"the engine failed: {type(exc).__name__}")
        finally:
            with self._lock:
                self._running.pop(task.id, None)
            # Scratch goes before the outcome is recorded: whoever sees the task end may count
            # on its files being gone (the result is in storage by now).
            shutil.rmtree(scratch, ignore_errors=True)
            self._record(claim, context, outcome, engine_name)

    def _record(self, claim: Claim, context: TaskContext, outcome: _Outcome, engine_name: str | None) -> None:
        kind = outcome.kind
        ended: Status | None = None
        try:
            if context.lease_lost:
                ended = None
            elif kind == "canceled" and context.shutting_down and not context.cancel_requested:
                ended = self.manager.release(claim)
            elif kind == "canceled":
                ended = self.manager.mark_canceled(claim, engine=engine_name)
            elif kind == "retry":
                ended = self.manager.retry(claim, outcome.code, outcome.message, outcome.delay)
            elif kind == "succeed":
                ended = self.manager.succeed(
                    claim, result_key=outcome.result_key, usage=outcome.usage or {}, engine=engine_name or ""
                )
            else:
                ended = self.manager.fail(claim, outcome.code, outcome.message, engine=engine_name)
        except Exception:
            log.exception("recording the outcome of task %s failed; its lease will lapse", claim.task.id)
        if kind == "succeed" and ended is not Status.SUCCEEDED:
            # Canceled as it finished, or the claim was lost (reaped): the file is nobody's.
            try:
                self.storage.delete(outcome.result_key)
            except StorageUnavailable:  # the orphan sweep removes it later
                log.warning("could not delete %s, which task %s no longer names", outcome.result_key, claim.task.id)
        log.info("task %s: %s -> %s", claim.task.id, kind, ended.value if ended else "not recorded (claim lost)")

    # -- the lease keeper ----------------------------------------------------------------

    def _keep_leases(self) -> None:
        renew_every = self.manager.lease_ms / 1000 / 3
        while not self._stopping.wait(self._tick):
            with self._lock:
                contexts = list(self._running.values())
            for context in contexts:
                self._keep(context, renew_every)
        # After stop(): keep renewing while tasks hand themselves back.
        while self.running:
            time.sleep(self._tick)
            with self._lock:
                contexts = list(self._running.values())
            for context in contexts:
                self._keep(context, renew_every)

    def _keep(self, context: TaskContext, renew_every: float) -> None:
        try:
            due = time.monotonic() - context.last_renewed >= renew_every
            if due or context.progress != context.reported:
                progress = context.progress
                context.cancel_requested = self.manager.heartbeat(context.claim, progress)
                context.reported = progress
                context.last_renewed = time.monotonic()
            else:
                context.cancel_requested = self.manager.cancel_requested(context.claim)
        except LeaseLost:
            context.lease_lost = True
        except Exception:
            log.warning("renewing the lease of task %s failed", context.claim.task.id, exc_info=True)
