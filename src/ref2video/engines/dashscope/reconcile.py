"""Finding an orphan's upstream task: a submit that may have reached the provider, whose
answer never got recorded (the process died, or the answer was lost on the way back).

Sending it again could make the owner pay twice, so the provider's task list is searched
instead: the tasks of the same account and model created around the moment the submit left,
less those already recorded as another task of ours. What is left is matched with care, since
handing one owner's video to another would be far worse than failing:

* none left: the provider has no such task. `Found.NOTHING`.
* exactly one left, and no other task of ours has an unrecorded submit of that account and
  model in the window (a sibling that could own it): it is ours.
* otherwise the candidates that have SUCCEEDED are queried, and the one whose `orig_prompt`
  (the provider echoes it) is our prompt is ours if it is the only one; when every candidate
  has been read and none is ours, there is `Found.NOTHING` for us. A candidate that FAILED or
  was CANCELED echoes no prompt, so it may be ours or a sibling's; when every other candidate
  has been read and is not ours, whichever it is, nothing succeeded for us upstream:
  `Found.FAILED`, and after a couple more looks the task fails (waiting longer would not help
  when the sibling's submit never left). Candidates still running may settle this later:
  `Found.UNSURE`, ask again.

An adopted task's result is also checked against the prompt when it succeeds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence

from ...protocol import Status
from .errors import ProviderTransient
from ...spec import TaskSpec
from ..base import HeldTask
from .errors import ProviderError
from .limiter import RateLimiter
from .parts import RelayParts, now_ms
from .provider import ProviderClient, UpstreamSummary, UpstreamTask, utc

__all__ = ["Found", "find_orphan", "orig_prompt", "same_prompt", "Reconciling"]

log = logging.getLogger(__name__)

_SETTLE_MS = 5_000  # the provider's list may lag its submits a little
SKEW_MS = 300_000  # our clock against the provider's
_RECONCILE_MS = 3_600_000  # how long an orphan may stay unsure before it fails
_UNSURE_WAIT = 15.0
# Looks in a row that find only failed candidates for an orphan before it fails: a sibling that
# succeeded is usually recorded meanwhile, and the one candidate left, adopted, gives the
# provider's own code.
_FAILED_LOOKS = 2

_PAGE = 100
_ENDED_EMPTY = frozenset({Status.FAILED.value, Status.CANCELED.value})  # ended with no video, echo no prompt
_MAX_PAGES = 50  # 5,000 tasks of one account and model in a few minutes: enough


class Found(enum.Enum):
    NOTHING = "nothing"  # no candidate: the submit never created a task
    FAILED = "failed"  # no candidate is ours that succeeded: ours, if it exists, failed or was canceled
    UNSURE = "unsure"  # candidates, but none can be told to be ours yet


async def find_orphan(
    provider: ProviderClient, limiter: RateLimiter, *, key_index: int, model: str, prompt: str,
    start_ms: int, end_ms: int, recorded: Callable[[Sequence[str]], Awaitable[set[str]]],
    siblings: Callable[[], Awaitable[int]],
) -> str | Found:
    """The upstream id of the orphan submitted with `key_index` for `model` between `start_ms`
    and `end_ms` (epoch ms, already widened for clock skew), or why there is none. Every call
    waits for the account's query `limiter`. Errors of the list propagate."""
    listed: list[UpstreamSummary] = []
    for page_no in range(1, _MAX_PAGES + 1):
        await limiter.acquire()
        page = await provider.list(utc(start_ms), utc(end_ms), model=model, page_no=page_no,
                                   page_size=_PAGE, key_index=key_index)
        listed.extend(page)
        if len(page) < _PAGE:
            break
    listed = [item for item in listed if item.gmt_create is None or start_ms <= item.gmt_create <= end_ms]
    taken = await recorded([item.task_id for item in listed])
    candidates = [item for item in listed if item.task_id not in taken]
    if not candidates:
        return Found.NOTHING
    if len(candidates) == 1 and not await siblings():
        return candidates[0].task_id
    matches = []
    all_known = True  # every candidate's prompt was read, or it ended with nothing to deliver
    ended_unread = False  # some candidate failed or was canceled: it may be ours
    for item in candidates:
        if item.status in _ENDED_EMPTY:
            ended_unread = True
            continue
        if item.status != Status.SUCCEEDED.value:
            all_known = False
            continue
        await limiter.acquire()
        try:
            task = await provider.get(item.task_id, key_index=key_index)
        except ProviderTransient:
            all_known = False  # this candidate stays unsure; the others may still settle it
            continue
        if same_prompt(orig_prompt(task), prompt):
            matches.append(item.task_id)
    if len(matches) == 1:
        return matches[0]
    if matches or not all_known:
        return Found.UNSURE
    return Found.FAILED if ended_unread else Found.NOTHING


def orig_prompt(task: UpstreamTask) -> str | None:
    """The prompt the provider says the task was made from (on SUCCEEDED answers)."""
    output = task.raw.get("output")
    value = output.get("orig_prompt") if isinstance(output, dict) else None
    return value if isinstance(value, str) else None


def same_prompt(echoed: str | None, prompt: str) -> bool:
    return echoed is not None and echoed.strip() == prompt.strip()


class Reconciling(RelayParts):
    """Adopting an orphan's upstream task, or failing it cleanly when there is none."""

    async def _reconcile(self, task: HeldTask, k: int, intent_ms: int, *, live: bool) -> None:
        """Find the upstream task of a submit whose answer was not recorded, and adopt it."""
        assert self.provider is not None
        spec = TaskSpec.from_json(task.spec)
        model = self.models[task.model]
        start_ms, end_ms = intent_ms - SKEW_MS, intent_ms + self.timeout_ms + SKEW_MS
        # The submit may still be in flight at the provider until its timeout has passed.
        settle_ms = (now_ms() if live else intent_ms + self.timeout_ms) + _SETTLE_MS
        failures = unsure = empty_looks = 0
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
            elif found is Found.FAILED and empty_looks >= _FAILED_LOOKS:
                await self._end(task.id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                                "the submit of this task was interrupted, and the provider made nothing for it "
                                "that succeeded (its task, if it made one, failed); nothing was charged, "
                                "please submit it again")
                return
            elif now_ms() > intent_ms + _RECONCILE_MS:
                await self._end(task.id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                                "the submit of this task was interrupted and the provider's task list "
                                "could not tell which of its tasks is this one")
                return
            else:
                log.info("relay: task %s is not told apart from other submits yet", task.id)
            empty_looks = empty_looks + 1 if found is Found.FAILED else 0
            unsure += 1  # ask again soon (a sibling may record its task any moment), then less often
            settle_ms = now_ms() + int(min(_UNSURE_WAIT, 1.5 * 2.0 ** unsure) * 1000)

    async def _adopt(self, task: HeldTask, k: int, upstream_id: str, intent_ms: int, prompt: str) -> bool:
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

    async def _nothing_upstream(self, task: HeldTask, *, live: bool) -> None:
        if live:  # the provider answered an error and made nothing: safe to submit again
            await self._call(self.manager.clear_intent, task.id)
            made_nothing = ProviderTransient("InternalError", "the submit failed and the provider made no task")
            await self._retry(task, made_nothing)
        else:
            await self._end(task.id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                            "the relay stopped while submitting this task and the provider has no "
                            "matching task; nothing was charged, please submit it again")
