"""Sharing each provider account's rate limits between the relay processes on one database.

The provider counts an account's calls however many of our processes make them, so every relay
process (`ref2video serve`, each `ref2video worker`) announces itself for its accounts through
its journal about once a second (`UpstreamJournal.announce`: a `relay_members` row per account, live
for `LIVE` seconds) and reads who else is live on them. Each account's limit is the lowest
rate its live members were configured with, and its places (the rate rounded down, at least 1)
are dealt out in order of the members' names: with 20 queries a second and three members, 7, 7
and 6. Each process sets its limiters to its share (`RateLimiter.reshape`), so the shares never
add up to more than the limit. A member that joins never raises anyone's share, and one that
leaves never lowers one.

Why the sum holds in every sliding second, while members come and go
-----------------------------------------------------------------------
A limiter lets through, in any second, at most the capacity it had when the last call arriving
in that second took its place (limiter.py); a place is taken at most `MARGIN` before the call
arrives. So it is enough that no process uses a larger share before every other process can
have stopped using the share that did not count it, one second and `MARGIN` earlier:

* **A view goes stale.** A process uses what it read for `FRESH` seconds from when it asked,
  no longer: if no announce has answered by then (the database is down or slow), its limiters
  give nothing until one does.
* **Joining.** A process that joins (at its start, or after its view went stale, since the
  others may have dropped it meanwhile) and finds other members on an account uses nothing of
  that account for `JOIN_WAIT` seconds (`FRESH` + 1 s + `MARGIN`): by then every other member
  has either read a view that counts it or stopped. Joins are serialised (on PostgreSQL by an
  advisory lock, on SQLite by its write lock), so of two processes starting together the second
  sees the first; one that finds itself alone uses the full rate at once.
* **Leaving.** A process that stops is counted for `LINGER` seconds more, time for the calls it
  had on their way to have arrived and their second to have passed. One that dies stops
  announcing and is dropped `LIVE` seconds after its last announce: it stopped calling
  `FRESH` seconds after that announce at the latest, and the other `LIVE - FRESH - 1 - MARGIN`
  seconds (1.75 s) allow for the clocks of the processes' hosts disagreeing (`expires_at` is
  written by one host's clock and read by another's, as leases are).

So the provider sees no more than the limit in any second, provided what the limiter itself
assumes holds (a request arrives within `MARGIN` of being written, or before its answer), the
hosts' clocks agree within 1.75 s, and no event loop stalls past the end of its view by more
than that slack. Past those bounds the overshoot is at most the share of the process concerned,
for as long as the excess lasts: a clock 3 s fast drops a dead member 1.25 s early, and for
that while its share may be used twice.

The cost: a process that joins others waits about four seconds before its first call on a
shared account; when one stops the others regain its share after `LINGER` seconds, after
`LIVE` seconds when it died; and with more members than an account has places, those last in
order of name get none (their tasks wait until a member leaves). Processes on different
databases cannot see each other: they must still split the rate by hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence

from .journal import Member, UpstreamJournal
from .limiter import RateLimiter

__all__ = ["RateShare", "share", "HEARTBEAT", "FRESH", "LIVE", "LINGER", "JOIN_WAIT", "MARGIN"]

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between announces
FRESH = 3.0  # seconds a view of the members is used, from when it was asked for
MARGIN = 0.25  # the limiter's margin: a call arrives at most this long after taking its place
JOIN_WAIT = FRESH + 1.0 + MARGIN  # a joiner's wait before it calls on an account it shares
LIVE = 6.0  # seconds a member counts after its last announce (FRESH + 1 + MARGIN + 1.75 of clock skew)
LINGER = 3.0  # seconds a member that stopped still counts (1 + MARGIN + 1.75 of clock skew)


def share(rate: float, me: str, members: Collection[str]) -> float:
    """`me`'s share of an account's `rate` among `members` (names, `me` among them): the
    account's places dealt out in order of name, and the rate in proportion to the places (so
    a limiter at that rate has exactly those places); 0 when none is left for `me`."""
    places = max(1, math.floor(rate + 1e-9))
    names = sorted(set(members) | {me})
    rank = names.index(me)
    mine = places // len(names) + (1 if rank < places % len(names) else 0)
    return rate * mine / places


class RateShare:
    """Sets the limiters of one process's accounts to its shares (see the module docstring).

    ```python
    sharing = RateShare(accounts, query_limiters, submit_limiters, query_rate=20, submit_rate=5)
    task = asyncio.create_task(sharing.run(journal))   # limiters give nothing until the first view
    ...
    task.cancel(); await sharing.leave(journal)
    ```

    `seen()` and `lapse()` are the whole policy, with the clock passed in, for tests.
    """

    def __init__(self, accounts: Sequence[str], query_limiters: Sequence[RateLimiter],
                 submit_limiters: Sequence[RateLimiter], *, query_rate: float, submit_rate: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limiters = list(zip(accounts, query_limiters, submit_limiters, strict=True))
        self.rates = {account: (query_rate, submit_rate) for account in accounts}
        self.clock = clock
        self.fresh_until = -math.inf  # no view yet
        self.usable_from: dict[str, float] = {}
        self.members: dict[str, int] = {}  # account -> live members at the last view (self included)
        self.lapse()

    @property
    def joining(self) -> bool:
        """The next view is a (re)join: there is none yet, or the last one went stale."""
        return self.clock() > self.fresh_until

    def seen(self, asked: float, me: str, members: Sequence[Member]) -> None:
        """Apply the view of `members` (from an announce asked for at `asked`, when `me` was
        marked live) to the limiters."""
        now = self.clock()
        joined = asked > self.fresh_until
        self.fresh_until = asked + FRESH
        for account, query, submit in self.limiters:
            here = [m for m in members if m.account == account]
            names = {m.process for m in here} | {me}
            self.members[account] = len(names)
            if joined:
                self.usable_from[account] = now + JOIN_WAIT if len(names) > 1 else now
            if now < self.usable_from.get(account, math.inf):
                query.reshape(0)
                submit.reshape(0)
                continue
            query_rate, submit_rate = self.rates[account]
            query.reshape(share(min([query_rate, *(m.query_rate for m in here)]), me, names))
            submit.reshape(share(min([submit_rate, *(m.submit_rate for m in here)]), me, names))

    def lapse(self) -> None:
        """The view went stale: nothing is given until the next one."""
        for _, query, submit in self.limiters:
            query.reshape(0)
            submit.reshape(0)

    async def run(self, journal: UpstreamJournal) -> None:
        """Announce every `HEARTBEAT` seconds and apply each view, until cancelled. The
        announces have a thread of their own, so busy database threads do not stale the view."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ref2video-relay-share")
        try:
            while True:
                asked, joining = self.clock(), self.joining
                announce = functools.partial(journal.announce, self.rates, LIVE, joining=joining)
                try:
                    me, members = await loop.run_in_executor(pool, announce)
                except Exception:
                    log.exception("relay: announcing this process to the others failed; will try again")
                else:
                    self.seen(asked, me, members)
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_later(max(0.0, self.fresh_until - self.clock()), self.lapse)
                await asyncio.sleep(HEARTBEAT)
        finally:
            if timer is not None:
                timer.cancel()
            self.lapse()
            pool.shutdown(wait=False)  # an announce still on its way only marks us live a while longer

    async def leave(self, journal: UpstreamJournal) -> None:
        """This process stops calling: the others regain its share after `LINGER` seconds."""
        self.lapse()
        try:
            await asyncio.get_running_loop().run_in_executor(None, journal.leave, LINGER)
        except Exception:
            log.exception("relay: leaving the accounts' members failed; the others wait %g s", LIVE)
