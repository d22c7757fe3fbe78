"""One ref2video process's parts, wired together from `Settings`.

Both the HTTP app and the command line build a `Service`; tests build their own with their
own settings, so nothing here is a module-level global. A `Service` is whole once built: its
database is migrated and every part exists. `start()` only sets its threads going.

What a process does is chosen by configuration: every process serves the API it is given to
(the app); with `workers > 0` it also runs tasks: worker threads for threaded engines, as many
as each engine's capacity, and the held engines (the relay) that hold many tasks without a
thread each; `worker_models` narrows the models it runs. The reaper runs where tasks run, the
retention sweep everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

from .app import keys, tasks
from .app.auth import Authenticator
from .app.gauges import TaskGauges
from .app.idempotency import Claim
from .app.limits import Limits
from .app.ledger import Prices
from .app.tasks import Billing
from .config import LIST_PRICES, Settings
from .engines.base import HeldEngine
from .engines.registry import EngineRegistry
from .periodic import Periodic
from .queue.held import HeldRuntime
from .queue.manager import QueueManager
from .queue.reaper import Reaper
from .queue.wakeup import Wakeup
from .queue.worker import WorkerPool
from .references import ReferenceLoader
from .retention import Sweeper
from .spec import TaskSpec
from .storage.base import Storage
from .storage.policy import PolicySigner
from .storage.setup import storages_from_settings
from .store.db import is_postgres, make_engine, migrate
from .store.keys import Principal
from .store.tasks import TaskRecord
from .webhooks import Sender, SenderSettings

__all__ = ["Service"]

log = logging.getLogger("ref2video")


class Service:
    """Database, storage, queue, engines and workers of one process.

    service = Service(Settings())   # migrates the database; every part is built
    service.start()                 # make the first key if there is none, start the threads
    ...
    service.stop()
    """

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage | None = None,
        uploads: Storage | None = None,
        registry: EngineRegistry | None = None,
        announce_first_key: bool = True,
    ) -> None:
        self.settings = settings
        # The first key's log line is for a server's operator; `generate` in-process is not one.
        self.announce_first_key = announce_first_key
        self.db = make_engine(settings.database_url)
        migrate(self.db)
        built_storage, built_uploads, self.signer = storages_from_settings(
            settings, settings.signing_secret or keys.server_secret(self.db, "url_signing"))
        self.policy = PolicySigner(keys.server_secret(self.db, "upload_policy"))
        self.auth = Authenticator(self.db)
        self.limits = Limits.from_settings(settings, self.db)  # rate limits and quotas, docs/limits.md
        self.storage: Storage = storage or built_storage
        self.uploads: Storage = uploads or built_uploads
        self.models: list[str] = list(settings.models)  # every model this server accepts
        self.relayed_as = settings.relay_models  # a relayed model takes its provider model's request form
        self.tz = ZoneInfo(settings.timezone)
        self.billing = Billing(Prices.of({**LIST_PRICES, **settings.prices}), self.tz) if settings.billing else None
        self.retention_ms = int(settings.retention_hours * 3600 * 1000)
        # SQLite has one writer: API threads queue here rather than in its busy handler,
        # which sleeps in steps and gave creates a p99 near a second under load.
        self.write_lock: contextlib.AbstractContextManager[object] = (
            contextlib.nullcontext() if is_postgres(self.db) else threading.Lock()
        )
        self.wakeup = Wakeup(self.db)
        self.gauges = TaskGauges(self.db)  # what /metrics reads from the task table
        self.manager = QueueManager(self.db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                                    on_requeue=self.wakeup.notify)
        self.references = ReferenceLoader.from_settings(settings, self.db, self.uploads, self.retention_ms)

        runs_tasks = settings.workers > 0
        self.registry = registry or EngineRegistry.from_settings(settings, only=settings.worker_models or None)
        groups = self.registry.groups() if runs_tasks else []
        self.slots = [(list(g.models), g.capacity) for g in groups if not g.held]
        self.pool = WorkerPool(self.manager, self.registry, self.storage, self.wakeup, scratch_dir=settings.scratch_dir,
                               slots=self.slots, poll_interval=settings.poll_interval,
                               load_references=self.references)
        held = [(g.engine, list(g.models), g.capacity) for g in groups if g.held and isinstance(g.engine, HeldEngine)]
        # What the held engines run here: (engine name, models, tasks held at once at most).
        self.held_slots = [(engine.name, models, capacity) for engine, models, capacity in held]
        self.held = HeldRuntime([(engine, capacity) for engine, _, capacity in held], self.manager, self.wakeup,
                                self.storage, self.references.own_upload)
        self.reaper = Reaper(self.manager, settings.reap_interval) if runs_tasks else None
        self.sweeper = Sweeper(self.db, self.storage, self.uploads, settings.scratch_dir, self.retention_ms,
                               orphan_grace_seconds=settings.orphan_grace_seconds)
        self._sweeping = Periodic("retention", self._sweep, settings.sweep_interval)
        # Webhooks go out from every process (one with workers=0 too) unless turned off.
        self.webhooks = Sender(self.db, SenderSettings.from_settings(settings)) if settings.webhook_sender else None

    async def submit(self, spec: TaskSpec, principal: Principal, *, callback_url: str | None = None,
                     idempotency: Claim | None = None) -> TaskRecord:
        """Create a task as the API does, with this process's write lock, billing and quota,
        and wake the workers that may claim it (here at once, elsewhere on PostgreSQL)."""
        task = await tasks.submit(self.db, spec, principal, retention_ms=self.retention_ms,
                                  write_lock=self.write_lock, on_insert=self.wakeup.notify_in,
                                  billing=self.billing, callback_url=callback_url, idempotency=idempotency,
                                  max_unfinished=self.limits.max_unfinished)
        self.wakeup.wake_local()
        return task

    @property
    def running(self) -> int:
        """Tasks this process runs now."""
        return self.pool.running + self.held.running

    def start(self, *, api: bool = True) -> None:
        """Start this process's threads. `api=False` for a worker process, which serves no
        HTTP and so makes no first key."""
        if api:
            self.ensure_first_key()
        self.pool.start()
        self.held.start()
        if self.reaper is not None:
            self.reaper.start()
        self._sweeping.start()
        if self.webhooks is not None:
            self.webhooks.start()

    def stop(self) -> None:
        self._sweeping.stop()
        if self.reaper is not None:
            self.reaper.stop()
        self.held.stop(self.settings.shutdown_grace)
        self.pool.stop(self.settings.shutdown_grace)
        if self.webhooks is not None:
            self.webhooks.stop(min(self.settings.shutdown_grace, self.settings.webhook_timeout))
        self.db.dispose()

    def _sweep(self) -> None:
        if removed := self.sweeper.sweep():
            log.info("swept %d expired tasks and uploads", removed)

    def ensure_first_key(self) -> Path | None:
        """On an empty key table, make one key and write it to a file only the user can read."""
        if keys.count_keys(self.db):
            return None
        key, info = keys.create_key(self.db, owner="default", name="first key")
        path = self.settings.data_dir / "first-api-key.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        if not self.announce_first_key:
            return path
        log.warning(
            "created the first API key (id %s); it is in %s. Use it as 'Authorization: Bearer <key>', "
            "and manage keys with 'ref2video keys'.", info.id, path.resolve(),
        )
        return path
