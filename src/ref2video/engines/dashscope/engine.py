"""`DashscopeEngine`: serves models through the provider's task API.

A relayed task spends minutes at the provider and almost no time here, so the relay does not
hold a worker thread per task, as local engines do. One thread per process runs an event loop
that owns every relayed task the process has claimed:

1. **Claim** a PENDING task of a relayed model (with the process's one lease token).
2. **Submit**: our own uploads go to the provider's storage first (`getPolicy`), then the
   intent is recorded, the task is submitted, and its upstream id is recorded in the same
   transaction that keeps it RUNNING under the relay's lease. A task claimed with an upstream
   id carries on from there; one with only an intent is an orphan and is reconciled through
   the provider's task list (`reconcile.py`), never submitted again blindly (`submit.py`).
3. **Poll**: one `AccountPoller` per provider account, within that account's query budget.
4. **Keep the result** (`results.py`): on SUCCEEDED the video is downloaded at once (the
   provider's link dies after 24 h) into our storage, the provider's usage is copied, and the
   task succeeds.

This module runs the event loop, claims, and keeps leases; `parts.py` holds what the parts share.

A keeper renews the leases of all held tasks in one statement, passes owners' cancel requests
to the pollers, and records the provider's state changes. On shutdown every held task goes
back to the queue, so another relay process adopts it by its upstream id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ... import metrics
from ...config import DASHSCOPE, Settings
from ...protocol import Status
from ...storage.base import Storage
from ..base import EngineHost, HeldTask
from .journal import UpstreamJournal
from .limiter import RateLimiter
from .poller import AccountPoller
from .provider import ProviderClient
from .reconcile import SKEW_MS, Reconciling
from .results import KeepingResults
from .sharing import RateShare
from .submit import Submitting, account_of, provider_body
from .parts import now_ms

__all__ = ["DashscopeEngine", "provider_body", "account_of"]

log = logging.getLogger(__name__)

_HEADROOM = 1.0  # of the provider's rate limits: the limiters count calls as they arrive


class DashscopeEngine(Submitting, Reconciling, KeepingResults):
    """Relays the tasks of `models` (ours -> the provider's names) to the provider: a held
    engine (engines/base.py), run by the process that serves those models.

    ```python
    engine = DashscopeEngine.from_settings(settings)
    engine.start(host)     # a thread with its own event loop; host.journal is its way to the table
    ...
    engine.stop(grace=10)  # unfinished tasks go back to the queue, to be adopted again
    ```
    """

    name = DASHSCOPE

    def __init__(self, settings: Settings, models: Mapping[str, str]) -> None:
        self.settings = settings
        self.models = dict(models)
        self.capacity = settings.dashscope_max_in_flight  # declared; the host's may differ
        self.room = self.capacity  # the tasks it may hold at once here: the host's capacity once started
        self.keys = [key.strip() for key in settings.dashscope_api_keys if key.strip()]
        self.accounts = [account_of(key) for key in self.keys]
        self.scratch = settings.scratch_dir / "relay"
        self.timeout_ms = int(settings.dashscope_timeout * 1000)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = 10.0
        self._wake = threading.Event()
        self._held: set[str] = _Counted(metrics.RELAY_IN_FLIGHT.labels(engine=self.name))
        self._closing: set[str] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self._cancel_asked: set[str] = set()  # cancels of held tasks not yet with a poller
        self._statuses: dict[str, str] = {}
        self._unknown: set[str] = set()  # held in the table but not here, at the last look
        self.pollers: list[AccountPoller] = []
        self.provider: ProviderClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DashscopeEngine:
        """Relays the models mapped to `dashscope`, or those of them the process was given
        (`worker_models`, `ref2video worker --models`)."""
        only = set(settings.worker_models)
        return cls(settings, {model: theirs for model, theirs in settings.relay_models.items()
                              if not only or model in only})

    def load(self) -> None:
        """Nothing to load: the provider holds the model."""

    # -- lifecycle (called from other threads) --------------------------------------------------

    def start(self, host: EngineHost) -> None:
        if not isinstance(host.journal, UpstreamJournal):
            raise TypeError("the relay needs a journal that keeps the provider's side of tasks (UpstreamJournal)")
        self.manager: UpstreamJournal = host.journal
        self.storage: Storage = host.storage
        self.resolve_upload = host.own_upload  # (owner, oss key) -> the owner's uploaded file
        self.room = host.capacity  # the operator's engine_capacity, else self.capacity
        self._wake = host.journal.subscribe()
        self.scratch.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="ref2video-relay", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        """Let submits in progress finish for `grace` seconds, then hand every held task back."""
        self._grace = grace
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(grace + 15)

    @property
    def in_flight(self) -> int:
        return len(self._held)

    def _run(self, ready: threading.Event) -> None:
        # A Runner, not a bare loop: on the way out it cancels and awaits whatever is still
        # pending (a limiter's keeper, say) before it closes the loop.
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            self._stopping = asyncio.Event()
            ready.set()
            try:
                runner.run(self._main())
            except Exception:
                log.exception("the relay stopped on an error")

    async def _main(self) -> None:
        s = self.settings
        self._db = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="ref2video-relay-db")
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ref2video-relay-wait")
        self._downloads = asyncio.Semaphore(8)
        self._starts = asyncio.Semaphore(min(64, 16 * len(self.keys)))
        # The full limits: each limiter holds a call's place until a second after it can have
        # arrived (limiter.py), however late the call left after its grant. The relay processes
        # on this database that share a key split its limits (sharing.py); until the first look
        # at who they are, the limiters give nothing.
        self.query_limiters = [RateLimiter(s.dashscope_query_rate * _HEADROOM) for _ in self.keys]
        self.submit_limiters = [RateLimiter(s.dashscope_submit_rate * _HEADROOM) for _ in self.keys]
        self.sharing = RateShare(self.accounts, self.query_limiters, self.submit_limiters,
                                 query_rate=s.dashscope_query_rate * _HEADROOM,
                                 submit_rate=s.dashscope_submit_rate * _HEADROOM)
        self.provider = ProviderClient(s.dashscope_base_url, self.keys, timeout=s.dashscope_timeout,
                                       tz=ZoneInfo(s.dashscope_timezone))
        self.pollers = [AccountPoller(self.provider, k, self.query_limiters[k], self,
                                      retry_budget=s.dashscope_retry_budget, skew_ms=SKEW_MS)
                        for k in range(len(self.keys))]
        background = [asyncio.create_task(p.run()) for p in self.pollers]
        background.append(asyncio.create_task(self.sharing.run(self.manager)))
        background.append(asyncio.create_task(self._keep()))
        claiming = asyncio.create_task(self._claim_loop())
        assert self._stopping is not None
        try:
            await self._stopping.wait()
        finally:
            claiming.cancel()
            if self._starting:
                await asyncio.wait(self._starting, timeout=self._grace)
            for task in [*background, *self._starting, *self._ending]:
                task.cancel()
            await asyncio.gather(claiming, *background, *self._starting, *self._ending, return_exceptions=True)
            await self.sharing.leave(self.manager)
            released = await self._call(self.manager.release_all)
            if released:
                log.info("relay: handed %d tasks back to the queue", released)
            await self.provider.aclose()
            self._db.shutdown(wait=True)
            self._waiter.shutdown(wait=False)

    # -- claiming -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            if len(self._held) + len(self._closing) >= self.room:
                await asyncio.sleep(1.0)
                continue
            await self._starts.acquire()
            self._wake.clear()
            try:
                task = await self._call(self.manager.claim, list(self.models))
            except Exception:
                self._starts.release()
                log.exception("relay: claiming a task failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if task is None:
                self._starts.release()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._waiter, self._wake.wait, self.settings.poll_interval)
                continue
            self._held.add(task.id)
            job = asyncio.create_task(self._start(task))
            self._starting.add(job)
            job.add_done_callback(self._started)

    def _started(self, job: asyncio.Task[None]) -> None:
        self._starting.discard(job)
        self._starts.release()

    async def _start(self, task: HeldTask) -> None:
        """Take a claimed task as far as the poller: submit it, reconcile it, or adopt it."""
        try:
            if task.upstream_id is not None:
                k = self._account_index(task)
                if k is not None:
                    prompt = task.spec["prompt"] if task.upstream_adopted else None
                    self._watch(task, k, task.upstream_id, task.upstream_submit_at or now_ms(),
                                task.upstream_status or Status.PENDING.value, prompt)
            elif task.upstream_submit_at is not None:
                k = self._account_index(task)
                if k is not None:
                    await self._reconcile(task, k, task.upstream_submit_at, live=False)
            elif task.cancel_requested or task.id in self._cancel_asked:
                await self._end(task.id, self.manager.canceled)
            else:
                await self._submit(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("relay: task %s failed unexpectedly", task.id)
            await self._end(task.id, self.manager.fail, "InternalError", f"the relay failed: {type(exc).__name__}")


    # -- the keeper -----------------------------------------------------------------------------

    async def _keep(self) -> None:
        """Renew leases, pass cancel requests on, record state changes: about once a second."""
        renew_every = self.manager.lease_seconds / 3
        last_renew = time.monotonic()
        assert self._stopping is not None
        while not self._stopping.is_set():
            await asyncio.sleep(min(1.0, renew_every))
            try:
                if time.monotonic() - last_renew >= renew_every:
                    last_renew = time.monotonic()
                    await self._call(self.manager.renew)
                    await self._reconcile_held()
                for task_id in await self._call(self.manager.cancel_requests):
                    if not any(p.request_cancel(task_id) for p in self.pollers):
                        self._cancel_asked.add(task_id)
                if self._statuses:
                    statuses, self._statuses = self._statuses, {}
                    await self._call(self.manager.set_status, statuses)
            except Exception:
                log.exception("relay: keeping leases failed; will try again")

    async def _reconcile_held(self) -> None:
        """Make what this process holds in memory and in the table agree. Tasks no longer ours
        in the table (reaped while this process stalled) are forgotten; tasks ours in the table
        that this process does not know (which would keep their lease for ever) go back to the
        queue, if they are still unknown at the next look (a claim may be on its way back)."""
        before = set(self._held)  # taken first: anything claimed later is not judged here
        held = await self._call(self.manager.held)
        for task_id in before - held:
            if task_id in self._held:
                self._held.discard(task_id)
                for poller in self.pollers:
                    poller.remove(task_id)
        unknown = {t for t in held - self._held if not any(t in poller for poller in self.pollers)}
        stray, self._unknown = unknown & self._unknown, unknown
        for task_id in stray:
            log.error("relay: task %s was held but not watched; handing it back to the queue", task_id)
            await self._call(self.manager.release, task_id)


class _Counted(set[str]):
    """The held tasks, kept in step with the in-flight gauge (inc and dec, so several engines
    in one process add up)."""

    def __init__(self, gauge: metrics.Gauge) -> None:
        super().__init__()
        self._gauge = gauge

    def add(self, task_id: str) -> None:
        if task_id not in self:
            super().add(task_id)
            self._gauge.inc()

    def discard(self, task_id: object) -> None:
        if task_id in self:
            super().discard(task_id)
            self._gauge.dec()
