"""`Relay`: the `dashscope` engine. It serves models through the provider's task API.

A relayed task spends minutes at the provider and almost no time here, so the relay does not
hold a worker thread per task, as local engines do. One thread per process runs an event loop
that owns every relayed task the process has claimed:

1. **Claim** a PENDING task of a relayed model (with the process's one lease token).
2. **Submit**: our own uploads go to the provider's storage first (`getPolicy`), then the
   intent is recorded, the task is submitted, and its upstream id is recorded in the same
   transaction that keeps it RUNNING under the relay's lease. A task claimed with an upstream
   id carries on from there; one with only an intent is an orphan and is reconciled through
   the provider's task list (`reconcile.py`), never submitted again blindly.
3. **Poll**: one `AccountPoller` per provider account, within that account's query budget.
4. **Keep the result**: on SUCCEEDED the video is downloaded at once (the provider's link dies
   after 24 h) into our storage, the provider's usage is copied, and the task succeeds.

A keeper renews the leases of all held tasks in one statement, passes owners' cancel requests
to the pollers, and records the provider's state changes. On shutdown every held task goes
back to the queue, so another relay process adopts it by its upstream id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from ...config import Settings
from ...media.sniff import sniff
from ...protocol import Status
from ...queue.relay import RelayManager, RelayTask
from ...queue.wakeup import Wakeup
from ...spec import TaskSpec, oss_key
from ...storage.base import Storage
from ...store.db import now_ms
from .errors import ProviderError, ProviderTransient
from .limiter import RateLimiter
from .poller import AccountPoller, Flight
from .provider import ProviderClient, UpstreamTask
from .reconcile import Found, find_orphan, orig_prompt, same_prompt

__all__ = ["Relay", "provider_body", "account_of"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SETTLE_MS = 5_000  # the provider's list may lag its submits a little
_SKEW_MS = 300_000  # our clock against the provider's
_RECONCILE_MS = 3_600_000  # how long an orphan may stay unsure before it fails
_UNSURE_WAIT = 15.0
_DOWNLOAD_TRIES = 5
_HEADROOM = 1.0  # of the provider's rate limits: the limiters count calls as they arrive


def account_of(api_key: str) -> str:
    """The account name stored with a task: a fingerprint of the key, never the key."""
    return hashlib.sha256(api_key.strip().encode()).hexdigest()[:16]


def provider_body(spec: TaskSpec, model: str, resolve: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The create body the provider expects, in the form the client sent (PROTOCOL.md sections
    2 and 8), from a checked spec; `resolve` replaces URLs (our uploads, sent on to the
    provider's storage) by the provider's own."""
    url = (lambda u: (resolve or {}).get(u, u))
    inputs: dict[str, Any] = {"prompt": spec.prompt}
    if spec.negative_prompt:
        inputs["negative_prompt"] = spec.negative_prompt
    if spec.form == "media":
        inputs["media"] = [
            {"type": item.type, "url": url(item.url),
             **({"reference_voice": url(item.reference_voice)} if item.reference_voice else {})}
            for item in spec.media
        ]
        parameters: dict[str, Any] = {"resolution": spec.resolution, "ratio": spec.ratio,
                                      "prompt_extend": spec.prompt_extend}
    else:
        inputs["reference_urls"] = [url(u) for u in spec.reference_urls]
        parameters = {"size": spec.size, "shot_type": spec.shot_type, "audio": spec.audio}
    parameters.update(duration=spec.duration, watermark=spec.watermark, seed=spec.seed)
    return {"model": model, "input": inputs, "parameters": parameters}


class Relay:
    """Relays the tasks of `models` (ours -> the provider's names) to the provider.

    ```python
    relay = Relay(settings, manager, storage, resolve_upload, wakeup)
    relay.start()          # a thread with its own event loop
    ...
    relay.stop(grace=10)   # unfinished tasks go back to the queue, to be adopted again
    ```
    """

    def __init__(self, settings: Settings, manager: RelayManager, storage: Storage,
                 resolve_upload: Callable[[str, str], Path | None], wakeup: Wakeup) -> None:
        self.settings = settings
        self.models = settings.relay_models
        self.manager = manager
        self.storage = storage
        self.resolve_upload = resolve_upload  # (owner, oss key) -> the owner's uploaded file
        self.wakeup = wakeup
        self.keys = [key.strip() for key in settings.dashscope_api_keys if key.strip()]
        self.accounts = [account_of(key) for key in self.keys]
        self.scratch = settings.scratch_dir / "relay"
        self.timeout_ms = int(settings.dashscope_timeout * 1000)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = 10.0
        self._wake = wakeup.subscribe()
        self._held: set[str] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self._cancel_asked: set[str] = set()  # cancels of held tasks not yet with a poller
        self._statuses: dict[str, str] = {}
        self._unknown: set[str] = set()  # held in the table but not here, at the last look
        self.pollers: list[AccountPoller] = []
        self.provider: ProviderClient | None = None

    # -- lifecycle (called from other threads) --------------------------------------------------

    def start(self) -> None:
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
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        ready.set()
        try:
            self._loop.run_until_complete(self._main())
        except Exception:
            log.exception("the relay stopped on an error")
        finally:
            self._loop.close()

    async def _main(self) -> None:
        s = self.settings
        self._db = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="ref2video-relay-db")
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ref2video-relay-wait")
        self._downloads = asyncio.Semaphore(8)
        self._starts = asyncio.Semaphore(min(64, 16 * len(self.keys)))
        # The full limits: each limiter holds a call's place until a second after it can have
        # arrived (limiter.py), however late the call left after its grant.
        self.query_limiters = [RateLimiter(s.dashscope_query_rate * _HEADROOM) for _ in self.keys]
        self.submit_limiters = [RateLimiter(s.dashscope_submit_rate * _HEADROOM) for _ in self.keys]
        self.provider = ProviderClient(s.dashscope_base_url, self.keys, timeout=s.dashscope_timeout,
                                       tz=ZoneInfo(s.dashscope_timezone))
        self.pollers = [AccountPoller(self.provider, k, self.query_limiters[k], self,
                                      retry_budget=s.dashscope_retry_budget, skew_ms=_SKEW_MS)
                        for k in range(len(self.keys))]
        background = [asyncio.create_task(p.run()) for p in self.pollers]
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
            if len(self._held) >= self.settings.dashscope_max_in_flight:
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

    async def _start(self, task: RelayTask) -> None:
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

    def _account_index(self, task: RelayTask) -> int | None:
        """The key a task was submitted with; it must be asked about with the same one."""
        if task.upstream_account in self.accounts:
            return self.accounts.index(task.upstream_account)
        self._spawn(self._end(task.id, self.manager.fail, "InternalError.UpstreamAccount",
                              "the provider account this task was submitted with is no longer configured"))
        return None

    # -- submitting -----------------------------------------------------------------------------

    async def _submit(self, task: RelayTask) -> None:
        assert self.provider is not None
        spec = TaskSpec.from_json(task.spec)
        model = self.models[task.model]
        k = self.provider.next_key()
        try:
            resolved, uploaded = await self._references(task, spec, model, k)
        except ProviderError as exc:
            await self._end(task.id, self.manager.fail, exc.code, exc.message)
            return
        except ProviderTransient as exc:
            await self._retry(task, exc)
            return
        if resolved is None:
            return
        if task.id in self._cancel_asked:
            await self._end(task.id, self.manager.canceled)
            return
        # The turn first, the intent just before sending: a crash between the two writes
        # leaves an orphan to reconcile, so that gap is kept as short as it can be.
        await self.submit_limiters[k].acquire()
        intent = await self._call(self.manager.intend, task.id, self.accounts[k])
        if intent is None:
            self._held.discard(task.id)  # no longer ours
            return
        try:
            upstream = await self.provider.submit(provider_body(spec, model, resolved), oss=uploaded, key_index=k)
        except ProviderError as exc:
            await self._end(task.id, self.manager.fail, exc.code, exc.message)
            return
        except ProviderTransient as exc:
            if exc.uncertain:  # it may exist upstream: find it rather than send it again
                log.warning("relay: submit of task %s may have reached the provider (%s); reconciling",
                            task.id, exc.message)
                await self._reconcile(task, k, intent, live=True)
            else:
                await self._call(self.manager.clear_intent, task.id)
                await self._retry(task, exc)
            return
        if not await self._call(self.manager.record, task.id, upstream.task_id, upstream.status):
            # Our lease lapsed meanwhile: whoever holds the task now reconciles and adopts it.
            log.error("relay: task %s was submitted as %s but is no longer ours", task.id, upstream.task_id)
            self._held.discard(task.id)
            return
        self._watch(task, k, upstream.task_id, intent, upstream.status, None)

    async def _references(self, task: RelayTask, spec: TaskSpec, model: str, k: int) -> tuple[dict[str, str] | None, bool]:
        """Our own uploads among the task's files, sent on to the provider's storage: our
        `oss://` URL -> the provider's. Public URLs go as they are (the provider fetches and
        checks them). None when a file is not the owner's (the task has failed)."""
        assert self.provider is not None
        resolved: dict[str, str] = {}
        for what, url in spec.all_urls:
            key = oss_key(url)
            if not key or url in resolved:
                continue
            path = await self._call(self.resolve_upload, task.owner, key)
            if path is None:
                await self._end(task.id, self.manager.fail, "InvalidURL",
                                f"{what}: {url} is not one of your uploads, or it has expired")
                return None, False
            await self.submit_limiters[k].acquire()
            resolved[url] = await self.provider.upload(path, model, key_index=k, name=PurePosixPath(key).name)
        return resolved, bool(resolved)

    async def _retry(self, task: RelayTask, exc: ProviderTransient) -> None:
        self._held.discard(task.id)
        await self._call(self.manager.retry, task, exc.code, exc.message, exc.retry_after or 0.0)

    # -- orphans --------------------------------------------------------------------------------

    async def _reconcile(self, task: RelayTask, k: int, intent_ms: int, *, live: bool) -> None:
        """Find the upstream task of a submit whose answer was not recorded, and adopt it."""
        assert self.provider is not None
        spec = TaskSpec.from_json(task.spec)
        model = self.models[task.model]
        start_ms, end_ms = intent_ms - _SKEW_MS, intent_ms + self.timeout_ms + _SKEW_MS
        # The submit may still be in flight at the provider until its timeout has passed.
        settle_ms = (now_ms() if live else intent_ms + self.timeout_ms) + _SETTLE_MS
        failures = unsure = 0
        while True:
            await asyncio.sleep(max(0.0, (settle_ms - now_ms()) / 1000))
            try:
                found = await find_orphan(
                    self.provider, self.query_limiters[k], key_index=k, model=model, prompt=spec.prompt,
                    start_ms=start_ms, end_ms=end_ms,
                    recorded=lambda ids: self._call(self.manager.recorded, ids),
                    siblings=lambda: self._call(self.manager.siblings, task.id, self.accounts[k], task.model,
                                                start_ms - (end_ms - start_ms), end_ms + (end_ms - start_ms)),
                )
            except (ProviderError, ProviderTransient) as exc:
                failures += 1
                if failures >= self.settings.dashscope_retry_budget:
                    await self._end(task.id, self.manager.fail, exc.code, f"{exc.message} (while looking for "
                                    f"a submit whose answer was lost; gave up after {failures} tries)")
                    return
                settle_ms = now_ms() + int(min(_UNSURE_WAIT, 2.0 ** failures) * 1000)
                continue
            failures = 0
            if isinstance(found, str):
                if await self._adopt(task, k, found, intent_ms, spec.prompt):
                    return
            elif found is Found.NOTHING:
                await self._nothing_upstream(task, live=live)
                return
            elif now_ms() > intent_ms + _RECONCILE_MS:
                await self._end(task.id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                                "the submit of this task was interrupted and the provider's task list "
                                "could not tell which of its tasks is this one")
                return
            else:
                log.info("relay: task %s is not told apart from other submits yet", task.id)
            unsure += 1  # ask again soon (a sibling may record its task any moment), then less often
            settle_ms = now_ms() + int(min(_UNSURE_WAIT, 1.5 * 2.0 ** unsure) * 1000)

    async def _adopt(self, task: RelayTask, k: int, upstream_id: str, intent_ms: int, prompt: str) -> bool:
        """Record the found upstream task as this task's; False when it must be looked for again
        (another of ours took it first)."""
        if await self._call(self.manager.record, task.id, upstream_id, Status.PENDING.value, adopted=True):
            log.warning("relay: task %s adopted upstream task %s", task.id, upstream_id)
            self._watch(task, k, upstream_id, intent_ms, Status.PENDING.value, prompt)
            return True
        if task.id not in await self._call(self.manager.held):
            self._held.discard(task.id)  # no longer ours at all
            return True
        return False

    async def _nothing_upstream(self, task: RelayTask, *, live: bool) -> None:
        if live:  # the provider answered an error and made nothing: safe to submit again
            await self._call(self.manager.clear_intent, task.id)
            made_nothing = ProviderTransient("InternalError", "the submit failed and the provider made no task")
            await self._retry(task, made_nothing)
        else:
            await self._end(task.id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                            "the relay stopped while submitting this task and the provider has no "
                            "matching task; nothing was charged, please submit it again")

    # -- watching: the poller's handler ---------------------------------------------------------

    def _watch(self, task: RelayTask, k: int, upstream_id: str, submitted_ms: int, status: str,
               prompt: str | None) -> None:
        self.pollers[k].add(Flight(task.id, upstream_id, submitted_ms, status, prompt))
        if task.cancel_requested or task.id in self._cancel_asked:
            self._cancel_asked.discard(task.id)
            self.pollers[k].request_cancel(task.id)

    def finished(self, flight: Flight, task: UpstreamTask) -> None:
        self._spawn(self._finish(flight, task))

    def status_changed(self, flight: Flight, status: str) -> None:
        self._statuses[flight.task_id] = status

    def gave_up(self, flight: Flight, code: str, message: str) -> None:
        self._spawn(self._end(flight.task_id, self.manager.fail, code, message))

    def cancel_refused(self, flight: Flight) -> None:
        # The provider started the task before our cancel reached it. The owner was told the
        # cancel was accepted, so the task ends CANCELED here and its result is not kept.
        self._spawn(self._end(flight.task_id, self.manager.canceled))

    async def _finish(self, flight: Flight, task: UpstreamTask) -> None:
        if task.status == Status.CANCELED.value or flight.cancel:  # the owner's cancel stands
            await self._end(flight.task_id, self.manager.canceled)
        elif task.status == Status.FAILED.value:
            await self._end(flight.task_id, self.manager.fail, task.code or "InternalError",
                            task.message or "the provider failed the task without saying why")
        elif flight.prompt is not None and not same_prompt(orig_prompt(task), flight.prompt):
            await self._end(flight.task_id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                            "the provider task found for this interrupted submit was made from another prompt")
        elif not task.video_url:
            await self._end(flight.task_id, self.manager.fail, "InternalError",
                            "the provider reported success without a video_url")
        else:
            async with self._downloads:
                await self._keep_result(flight, task)

    async def _keep_result(self, flight: Flight, task: UpstreamTask) -> None:
        """Download the video into our storage and succeed the task with the provider's usage."""
        assert self.provider is not None and task.video_url is not None
        part = self.scratch / f"{flight.task_id}.mp4"
        key = f"{flight.task_id}-{flight.upstream_id[:8]}.mp4"
        try:
            for attempt in range(1, _DOWNLOAD_TRIES + 1):
                try:
                    await self.provider.download(task.video_url, part, self.settings.dashscope_max_result_bytes)
                    break
                except ProviderTransient as exc:
                    if attempt == _DOWNLOAD_TRIES:
                        await self._end(flight.task_id, self.manager.fail, "InternalError.ResultDownload",
                                        f"{exc.message} (gave up after {attempt} tries)")
                        return
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
                except ProviderError as exc:
                    await self._end(flight.task_id, self.manager.fail, exc.code, exc.message)
                    return
            if not _is_video(part):
                await self._end(flight.task_id, self.manager.fail, "InternalError.ResultDownload",
                                "the provider's result is not an MP4 or MOV video")
                return
            await self._call(self.storage.put, key, part)
            ended = await self._end(flight.task_id, self.manager.succeed, result_key=key, usage=dict(task.usage))
            if ended is not Status.SUCCEEDED:  # canceled meanwhile, or no longer ours
                await self._call(self.storage.delete, key)
        finally:
            part.unlink(missing_ok=True)

    # -- the keeper -----------------------------------------------------------------------------

    async def _keep(self) -> None:
        """Renew leases, pass cancel requests on, record state changes: about once a second."""
        renew_every = self.manager.queue.lease_ms / 1000 / 3
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

    # -- plumbing -------------------------------------------------------------------------------

    async def _end(self, task_id: str, verb: Callable[..., Status | None], *args: Any, **kwargs: Any) -> Status | None:
        """Finish a task with one of the manager's compare-and-set verbs; it is then not held."""
        self._held.discard(task_id)
        self._cancel_asked.discard(task_id)
        self._statuses.pop(task_id, None)
        for poller in self.pollers:
            poller.remove(task_id)
        try:
            return await self._call(verb, task_id, *args, **kwargs)
        except Exception:
            log.exception("relay: recording the end of task %s failed; its lease will lapse", task_id)
            return None

    def _spawn(self, work: Any) -> None:
        job = asyncio.get_running_loop().create_task(work)
        self._ending.add(job)
        job.add_done_callback(self._ending.discard)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (SQL, file copies) on the relay's own small thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._db, functools.partial(fn, *args, **kwargs))


def _is_video(path: Path) -> bool:
    with path.open("rb") as f:
        found = sniff(f.read(64))
    return found is not None and found.kind == "video"
