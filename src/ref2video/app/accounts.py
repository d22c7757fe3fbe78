"""Operating the money: accounts, top-ups and adjustments, limits, statements and usage.

Amounts in and out are micro-credits (`ledger.to_micro` / `to_credits` convert). Every change
is a ledger entry and the balance it moves, in one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..store.db import now_ms
from ..store.models import Account, LedgerEntry
from . import ledger

__all__ = ["AccountInfo", "Entry", "UsageRow", "AccountExists", "NoSuchAccount", "BalanceOutOfRange", "create",
           "credit", "set_limits", "show", "statement", "usage", "audit"]

_UNCHANGED: Any = object()


class AccountExists(Exception):
    pass


class NoSuchAccount(Exception):
    pass


BalanceOutOfRange = ledger.BalanceOutOfRange


@dataclasses.dataclass(frozen=True)
class AccountInfo:
    owner: str
    balance: int  # what the owner may still spend: top-ups less charges and current holds
    held: int  # held by unfinished tasks
    daily_limit: int | None
    monthly_limit: int | None
    spent_today: int
    spent_this_month: int
    created_at: int


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    kind: str
    amount: int
    task_id: str | None
    model: str | None
    note: str | None
    created_at: int


@dataclasses.dataclass(frozen=True)
class UsageRow:
    owner: str
    model: str
    day: str  # YYYY-MM-DD in the service's zone
    tasks: int
    seconds: int
    cost: int


def create(db: Engine, owner: str, *, credit: int = 0, daily_limit: int | None = None,
           monthly_limit: int | None = None, tz: ZoneInfo) -> AccountInfo:
    """A new account, with an opening top-up of `credit`."""
    try:
        with db.begin() as conn:
            conn.execute(insert(Account).values(owner=owner, balance=0, daily_limit=daily_limit,
                                                monthly_limit=monthly_limit, created_at=now_ms()))
            if credit:
                ledger.credit(conn, owner, credit, note="opening balance")
    except IntegrityError:
        raise AccountExists(owner) from None
    return show(db, owner, tz=tz)


def credit(db: Engine, owner: str, amount: int, *, note: str | None = None) -> int:
    """Top up (positive) or adjust (negative, or any amount with kind "adjust") an account;
    the new balance."""
    with db.begin() as conn:
        try:
            return ledger.credit(conn, owner, amount, kind="topup" if amount > 0 else "adjust", note=note)
        except KeyError:
            raise NoSuchAccount(owner) from None


def set_limits(db: Engine, owner: str, *, daily: int | None = _UNCHANGED, monthly: int | None = _UNCHANGED) -> None:
    """Set (or with None, lift) an account's daily and monthly spend limits."""
    values = {k: v for k, v in (("daily_limit", daily), ("monthly_limit", monthly)) if v is not _UNCHANGED}
    if not values:
        return
    with db.begin() as conn:
        if conn.execute(update(Account).where(Account.owner == owner).values(**values)).rowcount != 1:
            raise NoSuchAccount(owner)


def show(db: Engine, owner: str, *, tz: ZoneInfo) -> AccountInfo:
    with db.connect() as conn:
        row = conn.execute(select(Account).where(Account.owner == owner)).first()
        if row is None:
            raise NoSuchAccount(owner)
        return AccountInfo(
            owner=owner, balance=row.balance, held=ledger.held_now(conn, owner), daily_limit=row.daily_limit,
            monthly_limit=row.monthly_limit, spent_today=ledger.spent_since(conn, owner, ledger.day_start(tz)),
            spent_this_month=ledger.spent_since(conn, owner, ledger.month_start(tz)), created_at=row.created_at,
        )


def statement(db: Engine, owner: str, *, since_ms: int | None = None, until_ms: int | None = None,
              limit: int = 10_000) -> list[Entry]:
    """The owner's ledger, oldest first."""
    where = [LedgerEntry.owner == owner]
    if since_ms is not None:
        where.append(LedgerEntry.created_at >= since_ms)
    if until_ms is not None:
        where.append(LedgerEntry.created_at < until_ms)
    with db.connect() as conn:
        rows = conn.execute(select(LedgerEntry).where(*where).order_by(LedgerEntry.id).limit(limit)).all()
    return [Entry(r.id, r.kind, r.amount, r.task_id, r.model, r.note, r.created_at) for r in rows]


def usage(db: Engine, *, tz: ZoneInfo, owner: str | None = None, since_ms: int | None = None,
          until_ms: int | None = None) -> list[UsageRow]:
    """What was charged, by owner, model and day (in `tz`), from the ledger's charges."""
    where = [LedgerEntry.kind == "charge"]
    if owner is not None:
        where.append(LedgerEntry.owner == owner)
    if since_ms is not None:
        where.append(LedgerEntry.created_at >= since_ms)
    if until_ms is not None:
        where.append(LedgerEntry.created_at < until_ms)
    with db.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.owner, LedgerEntry.model, LedgerEntry.amount, LedgerEntry.detail,
                   LedgerEntry.created_at).where(*where)
        ).all()
    totals: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        day = datetime.datetime.fromtimestamp(r.created_at / 1000, tz).strftime("%Y-%m-%d")
        total = totals.setdefault((r.owner, r.model or "", day), [0, 0, 0])
        total[0] += 1
        total[1] += int((r.detail or {}).get("seconds", 0))
        total[2] += -r.amount
    ordered = sorted(totals.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))  # day, owner, model
    return [UsageRow(o, m, d, *t) for (o, m, d), t in ordered]


def audit(db: Engine, owners: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """Accounts whose balance is not the sum of their ledger: owner -> (balance, sum). Empty
    when the books are right."""
    with db.connect() as conn:
        sums = dict(conn.execute(
            select(LedgerEntry.owner, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.owner)).all())
        balances = dict(conn.execute(select(Account.owner, Account.balance)).all())
    wanted = set(owners) if owners is not None else set(balances) | set(sums)
    return {o: (int(balances.get(o, 0)), int(sums.get(o) or 0)) for o in wanted
            if int(balances.get(o, 0)) != int(sums.get(o) or 0)}
