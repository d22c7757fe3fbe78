"""`ref2video accounts create | credit | limits | show | statement | usage`: the operator's
side of billing, straight on the database (like `keys`). Amounts are in credits ("12.5").

The server's modules are imported by the commands, not here (see `main`)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from .output import fail, out

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..app.accounts import AccountInfo

__all__ = ["register"]

accounts_app = typer.Typer(help="Accounts, balances and usage (when billing is on).", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file")]
InitOpt = Annotated[bool, typer.Option("--init", help="create the database if there is none")]
LimitOpt = Annotated[str | None, typer.Option(help="credits; 'none' lifts the limit")]


def register(app: typer.Typer) -> None:
    app.add_typer(accounts_app, name="accounts")


def _open(config: Path | None, init: bool) -> tuple[Engine, ZoneInfo]:
    from .main import _db, _settings  # the shared database checks of every local command

    return _db(config, init=init), ZoneInfo(_settings(config).timezone)


def _credits(text: str, what: str) -> int:
    from ..app.ledger import to_micro

    try:
        return to_micro(Decimal(text))
    except (InvalidOperation, ValueError):
        fail(f"{what} must be a number of credits, not {text!r}", 2)


def _limit(text: str | None, what: str) -> int | None:
    if text is None or text.lower() == "none":
        return None
    amount = _credits(text, what)
    if amount < 0:
        fail(f"{what} cannot be negative", 2)
    return amount


def _emit(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], as_csv: bool) -> None:
    """Rows as CSV on stdout, or as a table for people."""
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _show(info: AccountInfo, as_json: bool) -> None:
    from ..app.ledger import to_credits

    values = {
        "owner": info.owner, "balance": str(to_credits(info.balance)), "held": str(to_credits(info.held)),
        "daily_limit": None if info.daily_limit is None else str(to_credits(info.daily_limit)),
        "monthly_limit": None if info.monthly_limit is None else str(to_credits(info.monthly_limit)),
        "spent_today": str(to_credits(info.spent_today)), "spent_this_month": str(to_credits(info.spent_this_month)),
    }
    if as_json:
        print(json.dumps(values))
        return
    for key, value in values.items():
        print(f"{key}: {'none' if value is None else value}")


@accounts_app.command("create")
def create(owner: Annotated[str, typer.Argument(help="the owner (tenant) whose keys spend from it")],
           credit: Annotated[str, typer.Option(help="opening balance, in credits")] = "0",
           daily_limit: LimitOpt = None, monthly_limit: LimitOpt = None,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Open an account for an owner."""
    from ..app import accounts

    db, tz = _open(config, init)
    amount = _credits(credit, "--credit")
    if amount < 0:
        fail("--credit cannot be negative", 2)
    try:
        info = accounts.create(db, owner, credit=amount, daily_limit=_limit(daily_limit, "--daily-limit"),
                               monthly_limit=_limit(monthly_limit, "--monthly-limit"), tz=tz)
    except accounts.AccountExists:
        fail(f"owner {owner!r} already has an account", 1)
    _show(info, as_json)


@accounts_app.command("credit")
def credit_(owner: str, amount: Annotated[str, typer.Argument(help="credits; negative to adjust down")],
            note: Annotated[str, typer.Option(help="why, for the statement")] = "",
            config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Top up an account (or adjust it with a negative amount)."""
    from ..app import accounts
    from ..app.ledger import to_credits

    db, _ = _open(config, init)
    micro = _credits(amount, "amount")
    if micro == 0:
        fail("amount must not be zero", 2)
    try:
        balance = accounts.credit(db, owner, micro, note=note or None)
    except accounts.NoSuchAccount:
        fail(f"owner {owner!r} has no account; make one with 'ref2video accounts create'", 1)
    except accounts.BalanceOutOfRange as exc:
        fail(f"amount: {exc}", 2)
    print(f"balance: {to_credits(balance)}")


@accounts_app.command("limits")
def limits(owner: str, daily: LimitOpt = None, monthly: LimitOpt = None,
           config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Set the daily and monthly spend limits ('none' lifts one; an option left out stays)."""
    from ..app import accounts

    db, tz = _open(config, init)
    changes = {}
    if daily is not None:
        changes["daily"] = _limit(daily, "--daily")
    if monthly is not None:
        changes["monthly"] = _limit(monthly, "--monthly")
    try:
        accounts.set_limits(db, owner, **changes)
        _show(accounts.show(db, owner, tz=tz), False)
    except accounts.NoSuchAccount:
        fail(f"owner {owner!r} has no account", 1)


@accounts_app.command("show")
def show(owner: str, as_json: Annotated[bool, typer.Option("--json")] = False,
         config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Balance, what unfinished tasks hold, limits and spend."""
    from ..app import accounts

    db, tz = _open(config, init)
    try:
        _show(accounts.show(db, owner, tz=tz), as_json)
    except accounts.NoSuchAccount:
        fail(f"owner {owner!r} has no account", 1)


@accounts_app.command("statement")
def statement(owner: str, as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
              config: ConfigOpt = None, init: InitOpt = False) -> None:
    """Every ledger entry of an account, oldest first."""
    from ..app import accounts
    from ..app.ledger import to_credits

    db, tz = _open(config, init)
    entries = accounts.statement(db, owner)
    rows = [(datetime.fromtimestamp(e.created_at / 1000, tz).isoformat(timespec="seconds"), e.kind,
             str(to_credits(e.amount)), e.task_id or "", e.model or "", e.note or "") for e in entries]
    _emit(("time", "kind", "amount", "task_id", "model", "note"), rows, as_csv)


@accounts_app.command("usage")
def usage(owner: Annotated[str | None, typer.Option(help="one owner (default: all)")] = None,
          as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
          config: ConfigOpt = None, init: InitOpt = False) -> None:
    """What was charged, by owner, model and day."""
    from ..app import accounts
    from ..app.ledger import to_credits

    db, tz = _open(config, init)
    rows = [(r.day, r.owner, r.model, str(r.tasks), str(r.seconds), str(to_credits(r.cost)))
            for r in accounts.usage(db, tz=tz, owner=owner)]
    _emit(("day", "owner", "model", "tasks", "seconds", "cost"), rows, as_csv)
