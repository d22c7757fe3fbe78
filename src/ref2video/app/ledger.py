"""Money: prices, a task's hold, its settlement, and the append-only ledger behind a balance.

Amounts are whole micro-credits (a millionth of a credit; the operator says what a credit is
worth), so every sum is exact. A balance is the sum of its owner's ledger entries; the account
row keeps that sum so a hold is one compare-and-set (`balance >= hold`), written with the entry
in one transaction.

A task's life moves money three times at most, each once, whoever races to write it (the
ledger's unique index on (task, kind) refuses a second):

* **hold** at create, in the transaction that inserts the task: its largest possible cost
  (its seconds, plus 5 reference-video seconds unless every reference is an image), at the unit
  price of its model, tier and sound. Refused (400 `Arrearage`) when the balance or a spend
  limit cannot cover it; the task then does not exist.
* **release** of the whole hold when it ends, whatever the end, and at expiry.
* **charge** of the exact usage (billed seconds x the held unit price) when it SUCCEEDED.

Settlement runs inside the transition that ends the task (`effects.after`), so a crash, a
lapsed lease, an adopted orphan or two racing processes can neither skip it nor do it twice.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..errors import Arrearage
from ..protocol import MAX_BILLED_INPUT_SECONDS, Status, tier_of
from ..spec import IMAGE_SUFFIXES, TaskSpec
from ..store.db import now_ms
from ..store.models import Account, LedgerEntry, Task
from ..store.tasks import TaskRecord
from . import observe

__all__ = ["MICRO", "MAX_CREDITS", "BalanceOutOfRange",
           "Prices", "hold", "settle", "credit", "to_micro", "to_credits", "spent_since", "held_now",
           "day_start", "month_start"]

MICRO = 1_000_000  # micro-credits in a credit
# The largest amount, limit or balance, in credits: 10**18 micro-credits, which a signed 64-bit
# column holds with room for a sum of two (2**63 is about 9.2 * 10**18).
MAX_CREDITS = 10**12
_MAX_MICRO = MAX_CREDITS * MICRO


class BalanceOutOfRange(ValueError):
    """A credit would take the balance past `MAX_CREDITS` either way."""

# The kinds of entry that belong to a task (a task's net cost is minus their sum).
TASK_KINDS = ("hold", "release", "charge")


def to_micro(credits: Decimal | str | float | int) -> int:
    """Credits (as written by people: "12.5") to whole micro-credits, exactly. ValueError for
    infinity, NaN or more than `MAX_CREDITS` either way (checked before the conversion: the
    integer of "1e999999999" alone would take gigabytes)."""
    value = Decimal(str(credits))
    if not value.is_finite() or value.copy_abs() > MAX_CREDITS:  # copy_abs: exact, whatever the exponent
        raise ValueError(f"an amount must be a finite number of credits from -{MAX_CREDITS} to {MAX_CREDITS}")
    return int((value * MICRO).to_integral_value())


def to_credits(micro: int) -> Decimal:
    """Micro-credits as credits, with no trailing zeros and never in exponent form ("10", "1.5")."""
    value = (Decimal(micro) / MICRO).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


@dataclasses.dataclass(frozen=True)
class Prices:
    """Credits per billed second by `model:tier` (`wan2.6-r2v:720P`), with `:silent` for a
    task without sound where that is cheaper. A model with no price costs nothing."""

    table: Mapping[str, Decimal]

    @classmethod
    def of(cls, table: Mapping[str, float | str | Decimal]) -> Prices:
        return cls({key: Decimal(str(value)) for key, value in table.items()})

    def unit(self, spec: TaskSpec) -> int:
        """Micro-credits per billed second of this task."""
        tier = f"{spec.model}:{tier_of(spec.size)}P"
        price = (self.table.get(f"{tier}:silent") if not spec.audio else None) or self.table.get(tier)
        return to_micro(price) if price is not None else 0


def held_seconds(spec: TaskSpec) -> int:
    """The most seconds a task can be billed: its own, and the reference video it may use
    (unless every reference is an image, which is free)."""
    images = all(_is_image(item.type, item.url) for item in spec.references)
    return spec.duration + (0 if images else MAX_BILLED_INPUT_SECONDS)


def hold(conn: Connection, task: TaskRecord, spec: TaskSpec, prices: Prices, tz: ZoneInfo) -> int:
    """Hold the task's largest cost against its owner's balance; the amount held. Raises
    `Arrearage` when the owner has no account, or its balance or a limit cannot cover it."""
    unit = prices.unit(spec)
    seconds = held_seconds(spec)
    amount = unit * seconds
    postgres = conn.dialect.name == "postgresql"
    account = conn.execute(_ACCOUNT_FOR_UPDATE if postgres else _ACCOUNT, {"owner": task.owner}).first()
    if account is None:
        raise Arrearage("this account has no balance to pay for tasks")
    for limit, start, what in ((account.daily_limit, day_start(tz), "daily"),
                               (account.monthly_limit, month_start(tz), "monthly")):
        if limit is not None and spent_since(conn, task.owner, start) + amount > limit:
            raise Arrearage(f"this task would take the account past its {what} spend limit")
    done = conn.execute(_TAKE, {"w_owner": task.owner, "amount": amount})
    if done.rowcount != 1:
        raise Arrearage("the balance cannot cover this task")
    _add(conn, task.owner, "hold", -amount, task_id=task.id, task_at=task.submitted_at, model=task.model,
         detail={"unit": unit, "seconds": seconds})
    return amount


def settle(conn: Connection, task_ids: Sequence[str], status: Status | None,
           usage: Mapping[str, Any] | None = None) -> None:
    """Release the holds of tasks that just ended in `status` (None: they are being removed
    at expiry), and charge `usage` when they SUCCEEDED. A task with no hold (billing off) or
    already settled is left alone. The caller's transaction has already written (the state
    change), so on SQLite it holds the write lock and these reads cannot make it wait."""
    holds = conn.execute(
        select(LedgerEntry.task_id, LedgerEntry.owner, LedgerEntry.amount, LedgerEntry.detail,
               LedgerEntry.task_at, LedgerEntry.model)
        .where(LedgerEntry.task_id.in_(list(task_ids)), LedgerEntry.kind == "hold")
    ).all()
    for entry in holds:
        held = -entry.amount
        if not _add(conn, entry.owner, "release", held, task_id=entry.task_id, task_at=entry.task_at,
                    model=entry.model):
            continue  # settled before
        returned = held
        if status is Status.SUCCEEDED and usage:
            seconds = int(usage.get("duration", 0))
            cost = (entry.detail or {}).get("unit", 0) * seconds
            _add(conn, entry.owner, "charge", -cost, task_id=entry.task_id, task_at=entry.task_at,
                 model=entry.model, detail={"seconds": seconds})
            returned -= cost
            observe.charged(conn, entry.model, cost)  # counted once the transaction commits
            conn.execute(update(Task).where(Task.id == entry.task_id)
                         .values(usage={**usage, "cost": str(to_credits(cost))}))
        conn.execute(update(Account).where(Account.owner == entry.owner).values(balance=Account.balance + returned))


def credit(conn: Connection, owner: str, amount: int, *, kind: str = "topup", note: str | None = None) -> int:
    """Add `amount` micro-credits (negative for an adjustment down) to the owner's balance; the
    new balance. KeyError when there is no account, `BalanceOutOfRange` when the balance would
    pass `MAX_CREDITS` either way (the caller's transaction then rolls back the entry)."""
    if abs(amount) > _MAX_MICRO:
        raise BalanceOutOfRange(f"an amount is at most {MAX_CREDITS} credits either way")
    _add(conn, owner, kind, amount, note=note)
    done = conn.execute(
        update(Account).where(Account.owner == owner,
                              Account.balance.between(-_MAX_MICRO - amount, _MAX_MICRO - amount))
        .values(balance=Account.balance + amount).returning(Account.balance)
    ).first()
    if done is None:
        if conn.execute(select(Account.owner).where(Account.owner == owner)).first() is None:
            raise KeyError(owner)
        raise BalanceOutOfRange(f"the balance would pass {MAX_CREDITS} credits either way")
    return int(done.balance)


def spent_since(conn: Connection, owner: str, since_ms: int) -> int:
    """What the owner's tasks submitted since `since_ms` cost or still hold, in micro-credits."""
    net = conn.execute(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.owner == owner, LedgerEntry.task_at >= since_ms, LedgerEntry.kind.in_(TASK_KINDS))
    ).scalar_one()
    return -int(net)


def held_now(conn: Connection, owner: str) -> int:
    """Micro-credits the owner's unfinished tasks hold."""
    released = select(LedgerEntry.task_id).where(LedgerEntry.owner == owner, LedgerEntry.kind == "release")
    net = conn.execute(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.owner == owner, LedgerEntry.kind == "hold", LedgerEntry.task_id.not_in(released))
    ).scalar_one()
    return -int(net)


# -- plumbing ------------------------------------------------------------------------------------


def _add(conn: Connection, owner: str, kind: str, amount: int, *, task_id: str | None = None,
         task_at: int | None = None, model: str | None = None, detail: dict[str, Any] | None = None,
         note: str | None = None) -> bool:
    """Append an entry; False when the task already has one of this kind."""
    stmt = _ADD[conn.dialect.name == "postgresql", task_id is not None]
    values = dict(owner=owner, kind=kind, amount=amount, task_id=task_id, task_at=task_at, model=model,
                  detail=detail, note=note, created_at=now_ms())
    return conn.execute(stmt, {f"v_{name}": value for name, value in values.items()}).first() is not None


# Built once, as every hold runs them: building and keying a statement costs more than running it.
_ACCOUNT = select(Account.daily_limit, Account.monthly_limit).where(Account.owner == bindparam("owner"))
_ACCOUNT_FOR_UPDATE = _ACCOUNT.with_for_update()  # PostgreSQL: two processes holding take turns
_TAKE = (update(Account).where(Account.owner == bindparam("w_owner"), Account.balance >= bindparam("amount"))
         .values(balance=Account.balance - bindparam("amount")))


def _add_statement(insert: Any, per_task: bool) -> Any:
    stmt = insert(LedgerEntry).values({name: bindparam(f"v_{name}") for name in (
        "owner", "kind", "amount", "task_id", "task_at", "model", "detail", "note", "created_at")})
    if per_task:  # a task has one entry of each kind: a second is dropped
        stmt = stmt.on_conflict_do_nothing(index_elements=["task_id", "kind"])
    return stmt.returning(LedgerEntry.id)


_ADD = {(postgres, per_task): _add_statement(pg_insert if postgres else sqlite_insert, per_task)
        for postgres in (False, True) for per_task in (False, True)}


def day_start(tz: ZoneInfo) -> int:
    now = datetime.datetime.now(tz)
    return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def month_start(tz: ZoneInfo) -> int:
    now = datetime.datetime.now(tz)
    return int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def _is_image(kind: str, url: str) -> bool:
    if kind == "reference_image":
        return True
    if kind == "reference_video":
        return False
    path = url.split("?", 1)[0].lower()
    return path.endswith(IMAGE_SUFFIXES)
