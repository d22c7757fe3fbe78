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
  has been read and none is ours, there is `Found.NOTHING` for us. Candidates still running
  (or failed: a failed task echoes no prompt) may settle this later: `Found.UNSURE`, ask again.

An adopted task's result is also checked against the prompt when it succeeds.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence

from ...protocol import Status
from .errors import ProviderTransient
from .limiter import RateLimiter
from .provider import ProviderClient, UpstreamSummary, UpstreamTask, utc

__all__ = ["Found", "find_orphan", "orig_prompt", "same_prompt"]

_PAGE = 100
_MAX_PAGES = 50  # 5,000 tasks of one account and model in a few minutes: enough


class Found(enum.Enum):
    NOTHING = "nothing"  # no candidate: the submit never created a task
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
    all_known = True  # every candidate's prompt was read: none unaccounted for
    for item in candidates:
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
    return Found.NOTHING if not matches and all_known else Found.UNSURE


def orig_prompt(task: UpstreamTask) -> str | None:
    """The prompt the provider says the task was made from (on SUCCEEDED answers)."""
    output = task.raw.get("output")
    value = output.get("orig_prompt") if isinstance(output, dict) else None
    return value if isinstance(value, str) else None


def same_prompt(echoed: str | None, prompt: str) -> bool:
    return echoed is not None and echoed.strip() == prompt.strip()
