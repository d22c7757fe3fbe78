"""Rate limits and the unfinished-task quota (docs/limits.md).

Every key has two token buckets, one for creates and one for queries (a task's query, the list,
a cancel): a bucket holds at most `burst` tokens, gains `rate` a second, and each request takes
one; a request that finds less than one token is refused (429 `Throttling.RateQuota`, with
`Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` headers).
The rates and bursts are the settings', unless the key has its own (`KeyRates`, which the
request's principal carries from the authenticator, so they cost no database read); a bucket
whose key's rate changed is reshaped at its next request, keeping the tokens it holds up to the
new burst.
An owner may also have at most `max_unfinished` tasks PENDING or RUNNING at once; that is
checked in the create's own transaction (`check_unfinished`).

On SQLite (one process in practice) a bucket lives in the process (`LocalBucket`), exact and
free. On PostgreSQL every process shares each bucket through its `rate_buckets` row
(`SharedBucket`), and takes tokens from it in small batches, *leases*: a process that has none
left takes up to `lease_seconds` of the key's rate (`lease_size`: at least 4, at most half the
burst) in one statement, spends them locally, and drops what it has not spent after a second.
Every token spent was first taken from the shared row, which never holds more than the burst and refills
at the rate, so all processes together never admit more than `burst + rate * t` requests in
the first `t` seconds, exactly as one bucket would; in any later window the tokens a process
took just before it can add at most one lease per process. What leasing buys is that a query
pays a dictionary lookup, not a database write, except once a lease. A refusal learnt from the
row is remembered until the next token is due, so a client hammering a key that is out of
tokens costs each process one statement per token, not one per request.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from ..errors import Throttled
from ..store import limits as store
from ..store.db import is_postgres
from ..store.keys import KeyRates

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["CREATE", "QUERY", "KINDS", "Rate", "Limits", "LocalBucket", "SharedBucket", "check_unfinished",
           "lease_size", "LEASE_TTL", "MIN_LEASE", "UNFINISHED_RETRY_AFTER"]

CREATE, QUERY = "create", "query"
KINDS = (CREATE, QUERY)
LEASE_TTL = 1.0  # seconds a process keeps tokens it took from a shared bucket
MIN_LEASE = 4  # tokens a lease takes at least (when the burst allows)
UNFINISHED_RETRY_AFTER = 5  # seconds: a guess, since tasks end when they end
_MAX_BUCKETS = 100_000  # buckets one process remembers (two per key in use)
_WHAT = {CREATE: "create requests", QUERY: "queries"}


@dataclasses.dataclass(frozen=True)
class Rate:
    """A token bucket's shape: `per_second` tokens a second (0: no limit), `burst` at most."""

    per_second: float = 0.0
    burst: int = 0

    @classmethod
    def of(cls, per_second: float, burst: int = 0) -> Rate:
        """`burst` 0 means the rate rounded up (at least 1)."""
        if per_second <= 0:
            return cls()
        return cls(float(per_second), burst if burst > 0 else max(1, math.ceil(per_second)))

    @property
    def on(self) -> bool:
        return self.per_second > 0


# One `Rate` per shape: a key's own is worked out on each of its requests, and a rate that is
# the same object as its bucket's is found so without comparing fields.
_shaped = functools.lru_cache(maxsize=1024)(Rate.of)


def lease_size(rate: Rate, lease_seconds: float) -> int:
    """Tokens a process takes from a shared bucket at once: `lease_seconds` of the rate, at
    least `MIN_LEASE` (a statement per request would cost a query a fifth of its time), at
    most half the burst, and one when `lease_seconds` is 0 (exact, a write per request)."""
    if lease_seconds <= 0:
        return 1
    return max(1, min(max(int(rate.per_second * lease_seconds), MIN_LEASE), rate.burst // 2))


def _throttled(kind: str, rate: Rate, wait: float) -> Throttled:
    retry = max(1, math.ceil(wait))
    return Throttled(
        f"Requests rate limit exceeded, please try again later. (this key may make {rate.per_second:g} "
        f"{_WHAT[kind]} a second, {rate.burst} at once)",
        retry_after=retry,
        headers={"RateLimit-Limit": str(rate.burst), "RateLimit-Remaining": "0", "RateLimit-Reset": str(retry)},
    )


class LocalBucket:
    """A bucket in this process only: exact, and never touches the database."""

    def __init__(self, kind: str, rate: Rate, now: float) -> None:
        self.kind, self.rate = kind, rate
        self.tokens = float(rate.burst)
        self.at = now
        self._lock = threading.Lock()

    def reshaped(self, rate: Rate, now: float) -> LocalBucket:
        """This bucket under another rate: what it holds now, at most the new burst."""
        bucket = LocalBucket(self.kind, rate, now)
        with self._lock:
            held = min(self.rate.burst, self.tokens + max(0.0, now - self.at) * self.rate.per_second)
        bucket.tokens = min(float(rate.burst), held)
        return bucket

    def try_take(self, now: float) -> bool | None:
        """True: admitted. Raises `Throttled` when refused. (Never None: nothing to ask.)"""
        with self._lock:
            if now > self.at:
                self.tokens = min(self.rate.burst, self.tokens + (now - self.at) * self.rate.per_second)
                self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            wait = (1 - self.tokens) / self.rate.per_second
        raise _throttled(self.kind, self.rate, wait)

    def take(self, now: float) -> None:
        self.try_take(now)


class SharedBucket:
    """A bucket shared by every process on the PostgreSQL database, taken from in leases."""

    def __init__(self, kind: str, rate: Rate, name: str, db: Engine, *, lease_seconds: float,
                 clock: Callable[[], float]) -> None:
        self.kind, self.rate, self.name = kind, rate, name
        self.db = db
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.want = lease_size(rate, lease_seconds)
        self.stock = 0  # tokens taken from the row and not spent yet
        self.stock_until = 0.0
        self.blocked_until = 0.0  # the row had no token; the next is due then
        self.exists = False  # the row is known to exist
        self._lock = threading.Lock()
        self._leasing = threading.Lock()  # one lease at a time per bucket in this process

    def try_take(self, now: float) -> bool | None:
        """True: admitted from the local stock. Raises `Throttled` while the row is known to be
        empty. None: the row must be asked (`take`, off the event loop)."""
        with self._lock:
            if self.stock >= 1 and now < self.stock_until:
                self.stock -= 1
                return True
            if now < self.blocked_until:
                wait = self.blocked_until - now
            else:
                return None
        raise _throttled(self.kind, self.rate, wait)

    def reshaped(self, rate: Rate, now: float) -> SharedBucket:
        """This bucket under another rate. The row is the same (each lease statement caps it at the
        burst it is given); the tokens this process held, leased at the old rate, are dropped."""
        bucket = SharedBucket(self.kind, rate, self.name, self.db, lease_seconds=self.lease_seconds, clock=self.clock)
        bucket.exists = self.exists
        return bucket

    def take(self, now: float) -> None:
        with self._leasing:
            now = max(now, self.clock())  # another thread may have leased while this one waited
            if self.try_take(now):
                return
            taken, left = self._lease(now)
            with self._lock:
                if taken >= 1:
                    self.stock, self.stock_until, self.blocked_until = taken - 1, now + LEASE_TTL, 0.0
                    return
                wait = (1 - left) / self.rate.per_second
                self.blocked_until = now + wait
        raise _throttled(self.kind, self.rate, wait)

    def _lease(self, now: float) -> tuple[int, float]:
        now_ms = round(now * 1000)
        rate_per_ms = self.rate.per_second / 1000
        with self.db.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for _ in range(2):
                if not self.exists:
                    store.add_bucket(conn, self.name, self.rate.burst, now_ms)
                    self.exists = True
                got = store.take_tokens(conn, self.name, rate_per_ms=rate_per_ms, burst=self.rate.burst,
                                        want=self.want, now_ms=now_ms)
                if got is not None:
                    return got
                self.exists = False  # removed meanwhile: make it again
        raise RuntimeError(f"the rate bucket {self.name} could not be made")


class Limits:
    """This process's rate limits: `admit_now` on the event loop, `admit` (which may ask the
    database) in a thread when `admit_now` could not decide; `principal.rates` are the key's own
    limits, if it has any.

        if not limits.admit_now(QUERY, key_id, principal.rates):  # True: admitted; raises Throttled
            await in_thread(limits.admit, QUERY, key_id, principal.rates)
    """

    def __init__(self, db: Engine | None = None, *, create: Rate = Rate(), query: Rate = Rate(),
                 max_unfinished: int = 0, lease_seconds: float = 0.05, shared: bool | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.rates = {CREATE: create, QUERY: query}
        # The bursts as set (0: the rate rounded up), for a key with a rate of its own and no
        # burst of its own; `from_settings` has the settings' (a `Rate` keeps only the result).
        self.bursts = {CREATE: create.burst, QUERY: query.burst}
        self.max_unfinished = max_unfinished
        self.lease_seconds = lease_seconds
        self.shared = (db is not None and is_postgres(db)) if shared is None else shared
        if self.shared and db is None:
            raise ValueError("shared buckets need the database")
        self.clock = clock
        self._buckets: dict[tuple[str, str], LocalBucket | SharedBucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, db: Engine) -> Limits:
        limits = cls(
            db,
            create=Rate.of(settings.rate_create_per_second, settings.rate_create_burst),
            query=Rate.of(settings.rate_query_per_second, settings.rate_query_burst),
            max_unfinished=settings.max_unfinished_tasks,
            lease_seconds=settings.rate_limit_lease,
        )
        limits.bursts = {CREATE: settings.rate_create_burst, QUERY: settings.rate_query_burst}
        return limits

    def on(self, kind: str) -> bool:
        """Whether the settings limit `kind` (a key may still have a limit of its own)."""
        return self.rates[kind].on

    def rate(self, kind: str, own: KeyRates | None = None) -> Rate:
        """The `kind` bucket of a key whose own limits are `own` (None: it has none): each of
        its rate and burst that the key does not set is the settings'."""
        default = self.rates[kind]
        if own is None:
            return default
        if kind == CREATE:
            per_second, burst = own.rate_create_per_second, own.rate_create_burst
        else:
            per_second, burst = own.rate_query_per_second, own.rate_query_burst
        if per_second is None and burst is None:
            return default
        return _shaped(default.per_second if per_second is None else per_second,
                       self.bursts[kind] if burst is None else burst)

    def admit_now(self, kind: str, key_id: str, own: KeyRates | None = None) -> bool:
        """True when the request is admitted without asking the database (always, when this
        kind has no limit for the key); raises `Throttled` when it is refused; False means
        "call `admit`"."""
        rate = self.rate(kind, own)
        if not rate.on:
            return True
        return bool(self._bucket(kind, key_id, rate).try_take(self.clock()))

    def admit(self, kind: str, key_id: str, own: KeyRates | None = None) -> None:
        """Admit the request or raise `Throttled`; may ask the database (blocking)."""
        rate = self.rate(kind, own)
        if rate.on:
            self._bucket(kind, key_id, rate).take(self.clock())

    def _bucket(self, kind: str, key_id: str, rate: Rate) -> LocalBucket | SharedBucket:
        """The key's `kind` bucket, made at its first request and reshaped when `rate` is not
        the one it was made for (the key's own limits changed)."""
        found = self._buckets.get((kind, key_id))
        if found is not None and (found.rate is rate or found.rate == rate):
            return found
        with self._lock:
            found = self._buckets.get((kind, key_id))
            if found is not None and found.rate == rate:
                return found
            if found is not None:
                found = found.reshaped(rate, self.clock())
            else:
                if len(self._buckets) >= _MAX_BUCKETS:
                    self._buckets.clear()
                if self.shared:
                    assert self.db is not None
                    found = SharedBucket(kind, rate, f"{kind}:{key_id}", self.db,
                                         lease_seconds=self.lease_seconds, clock=self.clock)
                else:
                    found = LocalBucket(kind, rate, self.clock())
            self._buckets[(kind, key_id)] = found
            return found


def check_unfinished(conn: Connection, owner: str, most: int) -> None:
    """In the create's transaction, after its insert: refuse (`Throttled`, which rolls the
    create back) when the owner now has more than `most` tasks PENDING or RUNNING. On
    PostgreSQL under the owner's lock, so two creates in two processes cannot both pass."""
    if most <= 0:
        return
    store.lock_owner(conn, owner)
    unfinished = store.count_unfinished(conn, owner, up_to=most + 1)
    if unfinished > most:
        raise Throttled(
            f"Requests rate limit exceeded, please try again later. (this account has {most} unfinished "
            f"tasks, the most it may have at once; wait for one to end)",
            retry_after=UNFINISHED_RETRY_AFTER,
            headers={"RateLimit-Limit": str(most), "RateLimit-Remaining": "0",
                     "RateLimit-Reset": str(UNFINISHED_RETRY_AFTER)},
        )
