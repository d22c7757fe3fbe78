"""The relay processes that share provider accounts (`relay_members`): each announces itself
for its accounts about once a second, and reads who else is live on them. Statements on the
caller's connection; no function here opens a transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import Connection, delete, insert, select, text, update

from .models import RelayMember

__all__ = ["announce", "live", "leave", "lock_joins", "JOIN_LOCK_CLASS"]

# The first key of `pg_advisory_xact_lock(int, int)` for joins (store/limits.py uses another).
JOIN_LOCK_CLASS = 0x7232_7602
_FORGET_MS = 60_000  # rows this long expired are deleted by whoever announces next


def lock_joins(conn: Connection) -> None:
    """Hold the join lock until the transaction ends (PostgreSQL), so two processes joining at
    once see each other: the second reads after the first committed. On SQLite the announce's
    write already holds the one write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, 0)"), {"c": JOIN_LOCK_CLASS})


def announce(conn: Connection, process: str, rates: Mapping[str, tuple[float, float]], *, expires_at: int,
             now: int) -> None:
    """Mark `process` live on each account of `rates` (account -> its query and submit rates)
    until `expires_at`, and forget rows long expired."""
    conn.execute(delete(RelayMember).where(RelayMember.process == process, RelayMember.account.not_in(rates)))
    for account, (query_rate, submit_rate) in rates.items():
        values = {"query_rate": query_rate, "submit_rate": submit_rate, "expires_at": expires_at}
        found = conn.execute(update(RelayMember).where(RelayMember.process == process,
                                                       RelayMember.account == account).values(**values))
        if not found.rowcount:
            conn.execute(insert(RelayMember).values(process=process, account=account, **values))
    conn.execute(delete(RelayMember).where(RelayMember.expires_at < now - _FORGET_MS))


def live(conn: Connection, accounts: Collection[str], *, now: int) -> list[tuple[str, str, float, float]]:
    """Every member live at `now` on any of `accounts`: (process, account, query rate, submit rate)."""
    rows = conn.execute(select(RelayMember.process, RelayMember.account, RelayMember.query_rate,
                               RelayMember.submit_rate)
                        .where(RelayMember.account.in_(list(accounts)), RelayMember.expires_at > now)
                        .order_by(RelayMember.account, RelayMember.process))
    return [(r.process, r.account, float(r.query_rate), float(r.submit_rate)) for r in rows]


def leave(conn: Connection, process: str, *, expires_at: int) -> None:
    """`process` stops: it stays counted until `expires_at` (its last calls' second), no longer."""
    conn.execute(update(RelayMember).where(RelayMember.process == process, RelayMember.expires_at > expires_at)
                 .values(expires_at=expires_at))
