"""`UpstreamJournal`: what the relay asks of its host's journal beyond every held engine's
verbs (engines/base.py `Journal`): the provider's side of each task, and the process's share
of its accounts' rates.

The order of these writes is what keeps "never submit twice": `intend` records that a submit
is about to leave before it is sent, `record` stores the provider's task id once it answered.
A task with an intent and no id is an orphan, found again through the provider's task list
(`reconcile.py`) with `recorded` and `siblings`. Each call blocks (SQL), as a `Journal`'s do.
The process's journal (`queue/journal.py`) implements it over the task table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..base import Journal

__all__ = ["Member", "UpstreamJournal"]


@dataclasses.dataclass(frozen=True)
class Member:
    """A relay process live on a provider account, with the rates it was configured with for it."""

    process: str
    account: str
    query_rate: float
    submit_rate: float


@runtime_checkable
class UpstreamJournal(Journal, Protocol):
    """A `Journal` that also keeps the provider's side of held tasks."""

    def intend(self, task_id: str, account: str) -> int | None:
        """Record that a submit with `account` is about to leave: the moment (ms), or None
        when the task is no longer held."""
        ...

    def clear_intent(self, task_id: str) -> bool:
        """The submit certainly did not reach the provider: forget the intent."""
        ...

    def record(self, task_id: str, upstream_id: str, status: str, *, adopted: bool = False) -> bool:
        """Store the provider's task id; False when the task is no longer held or that upstream
        task already belongs to another of ours."""
        ...

    def set_status(self, statuses: dict[str, str]) -> None:
        """Remember the provider's latest state of held tasks (task id -> state)."""
        ...

    def recorded(self, upstream_ids: Sequence[str]) -> set[str]:
        """Which of these upstream tasks already belong to a task of ours."""
        ...

    def siblings(self, task_id: str, account: str, model: str, start_ms: int, end_ms: int) -> int:
        """Other unfinished tasks whose submit with this account and model left in the window
        and is not recorded: while there are any, one upstream candidate is ambiguous."""
        ...

    # the processes sharing the provider's accounts (their rate limits hold across them: sharing.py)
    def announce(self, rates: Mapping[str, tuple[float, float]], live_seconds: float, *,
                 joining: bool) -> tuple[str, list[Member]]:
        """Mark this process live for `live_seconds` on each account of `rates` (account -> its
        query and submit rates); return its own name and every live member of those accounts,
        itself included. `joining`: processes joining at once see each other."""
        ...

    def leave(self, linger_seconds: float) -> None:
        """This process stops speaking for its accounts; others count it `linger_seconds` more."""
        ...
