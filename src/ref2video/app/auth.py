"""Authentication, once per request: a key to the principal it stands for.

A live key is remembered for `ttl` seconds (one by default), so a steady poller costs no
database read per request, while a key revoked on any process stops working everywhere within
`ttl`. The presented secret is still compared with the stored hash on every request, in
constant time; unknown and revoked keys are never remembered. The key's own rate limits are
read with it and carried by its principal, so `Limits` needs no read of its own and a change
takes effect everywhere within `ttl` too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from ..store import keys
from ..store.keys import KeyRates, Principal

__all__ = ["Authenticator", "Principal"]

_MAX_REMEMBERED = 10_000


class Authenticator:
    """`Authenticator(db).principal(key)`: the principal of a live key, or None. Thread-safe."""

    def __init__(self, db: Engine, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl = ttl
        self.clock = clock
        # key id -> (read at, owner, secret hash, role, own rate limits)
        self._live: dict[str, tuple[float, str, str, str, KeyRates | None]] = {}
        self._lock = threading.Lock()

    def principal(self, key: str) -> Principal | None:
        parsed = keys.parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = self.clock()
        with self._lock:
            remembered = self._live.get(key_id)
        if remembered is None or now - remembered[0] >= self.ttl:
            with self.db.connect() as conn:
                found = keys.live_key(conn, key_id)
            with self._lock:
                if found is None:
                    self._live.pop(key_id, None)
                else:
                    if len(self._live) >= _MAX_REMEMBERED:
                        self._live.clear()
                    self._live[key_id] = (now, *found)
            remembered = None if found is None else (now, *found)
        stored_hash = remembered[2] if remembered else None
        if not keys.check_secret(secret, stored_hash):
            return None
        assert remembered is not None
        return Principal(key_id=key_id, owner=remembered[1], role=remembered[3], rates=remembered[4])

    def remembered(self, key: str) -> Principal | None:
        """The principal of a key remembered and still fresh, without touching the database (so
        the event loop may ask); None means "ask `principal`", not "refused"."""
        parsed = keys.parse_key(key)
        if parsed is None:
            return None
        with self._lock:
            remembered = self._live.get(parsed[0])
        if remembered is None or self.clock() - remembered[0] >= self.ttl:
            return None
        if not keys.check_secret(parsed[1], remembered[2]):
            return None
        return Principal(key_id=parsed[0], owner=remembered[1], role=remembered[3], rates=remembered[4])

    def forget(self, key_id: str) -> None:
        """Drop what this process remembers of a key (it was revoked, or its limits changed, here)."""
        with self._lock:
            self._live.pop(key_id, None)
