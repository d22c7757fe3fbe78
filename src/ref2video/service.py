"""One ref2video process's parts, wired together from `Settings`.

Both the HTTP app and the command line build a `Service`; tests build their own with
their own settings, so nothing here is a module-level global.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

from .config import Settings
from .engines.registry import EngineRegistry
from .queue.manager import QueueManager
from .queue.wakeup import Wakeup
from .queue.worker import WorkerPool
from .storage.base import Storage
from .storage.local import LocalStorage
from .references import ReferenceLoader
from .retention import Sweeper
from .storage.policy import PolicySigner
from .storage.signing import UrlSigner
from .queue.relay import RelayManager
from .engines.dashscope.engine import Relay
from .store import keys
from .store.db import is_postgres, make_engine, migrate

__all__ = ["Service"]

log = logging.getLogger("ref2video")


class Service:
    """Database, storage, queue and workers of one process.

    service = Service(Settings())
    service.start()          # migrate, make the first key if there is none, start workers
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
        assert settings.results_dir is not None
        self.storage: Storage = storage or LocalStorage(settings.results_dir)
        self.registry = registry or EngineRegistry.from_settings(settings)
        relayed = settings.relay_models
        self.models: list[str] = list(settings.models)  # every model this server accepts
        self.tz = ZoneInfo(settings.timezone)
        self.retention_ms = int(settings.retention_hours * 3600 * 1000)
        self.wakeup = Wakeup(self.db)
        self.manager = QueueManager(
            self.db,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            on_requeue=self.wakeup.notify,
        )
        self.uploads: Storage = uploads or LocalStorage(settings.data_dir / "uploads")
        self.references = ReferenceLoader.from_settings(settings, self.db, self.uploads, self.retention_ms)
        self.sweeper = Sweeper(self.db, self.storage, self.uploads, settings.scratch_dir, self.retention_ms,
                               orphan_grace_seconds=settings.orphan_grace_seconds)
        local_workers = settings.workers if self.registry.models else 0
        self.pool = WorkerPool(
            self.manager, self.registry, self.storage, self.wakeup,
            scratch_dir=settings.scratch_dir, size=local_workers, reaps=settings.workers > 0,
            poll_interval=settings.poll_interval, reap_interval=settings.reap_interval,
            load_references=self.references, sweep=self.sweeper.sweep, sweep_interval=settings.sweep_interval,
        )
        # SQLite has one writer: API threads queue here rather than in its busy handler,
        # which sleeps in steps and gave creates a p99 near a second under load.
        self.write_lock: contextlib.AbstractContextManager[object] = (
            contextlib.nullcontext() if is_postgres(self.db) else threading.Lock()
        )
        # The relay runs where tasks run (workers > 0): one event loop for all relayed tasks.
        self.relay: Relay | None = None
        if relayed and settings.workers > 0:
            token = str(uuid.uuid4())  # one lease token for all of this relay's tasks
            self.relay = Relay(settings, RelayManager(self.manager, token, on_requeue=self.wakeup.notify),
                               self.storage, self.references.own_upload, self.wakeup)
        self.signer: UrlSigner | None = None
        self.policy: PolicySigner | None = None

    def prepare(self) -> None:
        """Migrate the database and load the URL signing secret."""
        migrate(self.db)
        secret = self.settings.signing_secret or keys.server_secret(self.db, "url_signing")
        self.signer = UrlSigner(secret, self.settings.url_ttl_seconds)
        self.policy = PolicySigner(keys.server_secret(self.db, "upload_policy"))

    def start(self, *, api: bool = True) -> None:
        """Migrate, then run this process's workers and relay. `api=False` for a worker
        process, which serves no HTTP and so makes no first key."""
        self.prepare()
        if api:
            self.ensure_first_key()
        self.pool.start()
        if self.relay is not None:
            self.relay.start()

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop(self.settings.shutdown_grace)
        self.pool.stop(self.settings.shutdown_grace)
        self.db.dispose()

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
