"""The webhook sender: one thread per process with an event loop of its own, delivering what
the outbox holds, apart from the task queue.

Every `poll_interval` (and at once after each delivery) it claims due messages, as many as it
has room for (`concurrency`), each for a lease a little longer than one attempt may take, so
no two senders, in this process or another, ever send one message at the same time. A 2xx
answer marks the message delivered; anything else (another status, a refused address, no
answer in time) sets the next attempt by `Backoff`, until the window ends and it is given up.

A sender that dies after claiming a message and before recording how it went leaves its lease
to lapse; then any sender takes it again and sends it with the same `webhook-id`. Delivery is
therefore at least once with a stable id: a receiver that keys on `webhook-id` handles each
event exactly once.

Nothing here runs inside a task's transaction and nothing a task waits on waits here: a slow
or dead endpoint costs a delivery slot for at most `timeout`, never a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from typing import Any

import httpx
from sqlalchemy import Engine

from ..app import outbox
from ..app.outbox import Backoff, Delivery
from ..media.netguard import IPNetwork, parse_allow_list
from .post import post, signed_headers

__all__ = ["SenderSettings", "Sender"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SenderSettings:
    """What a sender needs from `Settings` (docs/configuration.md, the `webhook_*` rows)."""

    allow: tuple[str, ...] = ()  # `fetch_allow`: ranges open despite being private
    timeout: float = 10.0  # one attempt, all of it
    concurrency: int = 16  # attempts in flight at once, per process
    poll_interval: float = 1.0
    backoff: Backoff = Backoff()
    keep_s: float = 86400.0  # finished messages are removed after this
    sweep_interval: float = 300.0

    @classmethod
    def from_settings(cls, settings: Any) -> SenderSettings:
        return cls(
            allow=tuple(settings.fetch_allow), timeout=settings.webhook_timeout,
            concurrency=settings.webhook_concurrency, poll_interval=settings.webhook_poll_interval,
            backoff=Backoff(settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds,
                            settings.webhook_retry_hours * 3600),
            keep_s=max(settings.retention_hours, settings.webhook_retry_hours) * 3600,
            sweep_interval=settings.sweep_interval,
        )

    @property
    def lease_ms(self) -> int:
        """A claim outlives the attempt it is for (bounded by `timeout`) with room to record it."""
        return int((self.timeout + 5.0) * 1000)


class Sender:
    """`Sender(db, SenderSettings()).start()`; `stop(grace)` lets attempts in flight finish
    for up to `grace` seconds and hands back the rest untried (due again at once)."""

    def __init__(self, db: Engine, settings: SenderSettings) -> None:
        self.db = db
        self.settings = settings
        self.networks: tuple[IPNetwork, ...] = parse_allow_list(settings.allow)
        self._stopping = threading.Event()
        self._grace = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nudge: asyncio.Event | None = None
        self._ready = threading.Event()
        self.delivered = 0  # counted for logs and tests

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="ref2video-webhooks", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)

    def wake(self) -> None:
        """Look for due messages now rather than at the next poll."""
        loop, nudge = self._loop, self._nudge
        if loop is not None and nudge is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(nudge.set)

    def stop(self, grace: float = 0.0) -> None:
        self._grace = grace
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(grace + self.settings.timeout + 10.0)

    # -- the loop ----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:  # pragma: no cover  (logged: a dead sender must be visible)
            log.exception("the webhook sender stopped")

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._nudge = asyncio.Event()
        self._ready.set()
        in_flight: dict[asyncio.Task[None], Delivery] = {}
        next_sweep = time.monotonic() + self.settings.sweep_interval
        # No redirects, no proxies from the environment (they would connect to the name, not
        # the checked address), no connection kept: each is pinned to one address and name.
        limits = httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=0)
        timeout = httpx.Timeout(self.settings.timeout, connect=min(self.settings.timeout, 10.0))
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, limits=limits,
                                     timeout=timeout) as client:
            while not self._stopping.is_set():
                self._nudge.clear()
                room = self.settings.concurrency - len(in_flight)
                if room > 0:
                    for delivery in await self._claim(room):
                        task = asyncio.create_task(self._deliver(client, delivery))
                        in_flight[task] = delivery
                        task.add_done_callback(lambda t: self._done(in_flight, t))
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.sweep_interval
                    await self._sweep()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), self.settings.poll_interval)
            await self._finish(in_flight)

    def _done(self, in_flight: dict[asyncio.Task[None], Delivery], task: asyncio.Task[None]) -> None:
        """An attempt ended: its slot is free, so look for more at once."""
        delivery = in_flight.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None and delivery is not None:
            log.error("webhook %s failed unexpectedly; it will be sent again once its lease lapses",
                      delivery.message.message_id, exc_info=exc)
        if self._nudge is not None:
            self._nudge.set()

    async def _claim(self, room: int) -> list[Delivery]:
        try:
            return await asyncio.to_thread(outbox.claim, self.db, limit=room, lease_ms=self.settings.lease_ms)
        except Exception:
            log.exception("could not read the webhook outbox; will try again")
            return []

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        message = delivery.message
        body = json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False)
        headers = signed_headers(delivery.secret, message.message_id, body)
        attempt = await post(client, message.url, body.encode(), headers, allow=self.networks,
                             timeout=self.settings.timeout)
        try:
            outcome = await asyncio.to_thread(outbox.record, self.db, message, attempt.error, self.settings.backoff)
        except Exception:  # its lease lapses and it is sent again, with the same id
            log.exception("could not record webhook %s; it will be sent again", message.message_id)
            return
        if outcome == "delivered":
            self.delivered += 1
        elif outcome == "given_up":
            log.warning("gave up webhook %s (%s of task %s) to %s after %d attempts: %s", message.message_id,
                        message.event, message.task_id, message.url, message.attempts, attempt.error)
        elif outcome == "retry":
            log.info("webhook %s to %s failed (attempt %d): %s", message.message_id, message.url,
                     message.attempts, attempt.error)

    async def _sweep(self) -> None:
        try:
            removed = await asyncio.to_thread(outbox.sweep, self.db, keep_ms=int(self.settings.keep_s * 1000))
        except Exception:
            log.exception("could not sweep the webhook outbox; will try again")
            return
        if removed:
            log.info("swept %d finished webhook messages", removed)

    async def _finish(self, in_flight: dict[asyncio.Task[None], Delivery]) -> None:
        """On stop: attempts in flight get the grace; the rest are cancelled and handed back."""
        if in_flight:
            await asyncio.wait(list(in_flight), timeout=self._grace)
        left = {task: delivery for task, delivery in in_flight.items() if not task.done()}
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if left:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(outbox.release, self.db, [d.message for d in left.values()])
