"""Webhook endpoints, owners' callback secrets and the outbox: statements on the caller's
connection; no function here opens a transaction (the app layer does, `app/webhooks.py` and
`app/outbox.py`).

An outbox row is one message to one URL. It is due while it is neither delivered nor given up,
its `next_at` has come and no sender holds it (`lease_until` unset or past). A sender takes due
rows with `claim_due` (a lease, and `attempts + 1`); every later write about that attempt is a
compare-and-set on the row's `attempts`, so a sender whose lease lapsed, and whose row another
sender took meanwhile, can never record its late outcome over the newer one, and an attempt is
recorded once (recording ends the lease).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import OutboxMessage, WebhookEndpoint, WebhookSecret

__all__ = [
    "EndpointRow", "OutboxRow", "insert_endpoint", "list_endpoints", "count_endpoints", "endpoint_secret",
    "disable_endpoint", "endpoints_of", "enabled_secrets", "owner_secret", "insert_messages", "claim_due",
    "any_due", "delivered", "retry_at", "give_up", "release", "give_up_endpoint", "recent", "delete_finished",
]


@dataclasses.dataclass(frozen=True)
class EndpointRow:
    id: str
    owner: str
    url: str
    events: list[str]
    created_at: int


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    id: int
    message_id: str
    owner: str
    endpoint_id: str | None
    url: str
    event: str
    task_id: str
    payload: dict[str, Any]
    created_at: int
    next_at: int
    attempts: int
    delivered_at: int | None
    given_up_at: int | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Any) -> OutboxRow:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


_OUTBOX_COLUMNS = [OutboxMessage.__table__.c[f.name] for f in dataclasses.fields(OutboxRow)]
_ENDPOINT_COLUMNS = [WebhookEndpoint.__table__.c[f.name] for f in dataclasses.fields(EndpointRow)]
_ENABLED = WebhookEndpoint.disabled_at.is_(None)
_OPEN = and_(OutboxMessage.delivered_at.is_(None), OutboxMessage.given_up_at.is_(None))


# -- endpoints -----------------------------------------------------------------------------------


def insert_endpoint(conn: Connection, *, id: str, owner: str, url: str, secret: str, events: list[str],
                    now: int) -> EndpointRow:
    conn.execute(insert(WebhookEndpoint).values(id=id, owner=owner, url=url, secret=secret, events=events,
                                                created_at=now))
    return EndpointRow(id, owner, url, events, now)


def list_endpoints(conn: Connection, owner: str) -> list[EndpointRow]:
    """The owner's enabled endpoints, oldest first."""
    rows = conn.execute(
        select(*_ENDPOINT_COLUMNS).where(WebhookEndpoint.owner == owner, _ENABLED)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()
    return [EndpointRow(r.id, r.owner, r.url, list(r.events), r.created_at) for r in rows]


def count_endpoints(conn: Connection, owner: str) -> int:
    return len(conn.execute(select(WebhookEndpoint.id).where(WebhookEndpoint.owner == owner, _ENABLED)).all())


def endpoint_secret(conn: Connection, owner: str, endpoint_id: str) -> str | None:
    return conn.execute(
        select(WebhookEndpoint.secret).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner == owner,
                                             _ENABLED)
    ).scalar()


def disable_endpoint(conn: Connection, owner: str, endpoint_id: str, now: int) -> bool:
    done = conn.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner == owner, _ENABLED)
        .values(disabled_at=now)
    )
    return done.rowcount == 1


def endpoints_of(conn: Connection, owners: Collection[str]) -> list[EndpointRow]:
    """The enabled endpoints of `owners`."""
    if not owners:
        return []
    rows = conn.execute(
        select(*_ENDPOINT_COLUMNS).where(WebhookEndpoint.owner.in_(list(owners)), _ENABLED)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()
    return [EndpointRow(r.id, r.owner, r.url, list(r.events or []), r.created_at) for r in rows]


def enabled_secrets(conn: Connection, endpoint_ids: Collection[str]) -> dict[str, str]:
    """endpoint id -> secret, for those of `endpoint_ids` still enabled."""
    if not endpoint_ids:
        return {}
    rows = conn.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.secret).where(WebhookEndpoint.id.in_(list(endpoint_ids)), _ENABLED)
    ).all()
    return {r.id: r.secret for r in rows}


def owner_secret(conn: Connection, owner: str, candidate: str, now: int) -> str:
    """The owner's callback secret; `candidate` becomes it when the owner has none yet (two
    callers racing both get the one that was stored first)."""
    _insert_ignoring(conn, WebhookSecret, [{"owner": owner, "secret": candidate, "created_at": now}], ["owner"])
    return conn.execute(select(WebhookSecret.secret).where(WebhookSecret.owner == owner)).scalar_one()


# -- the outbox ----------------------------------------------------------------------------------


def insert_messages(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Queue messages; one whose `message_id` is already queued is left as it is."""
    if rows:
        _insert_ignoring(conn, OutboxMessage, rows, ["message_id"])


def _due(now: int) -> Any:
    return and_(_OPEN, OutboxMessage.next_at <= now,
                or_(OutboxMessage.lease_until.is_(None), OutboxMessage.lease_until <= now))


def any_due(conn: Connection, now: int) -> bool:
    """Whether a message is due (a read: an idle sender's check writes nothing)."""
    return conn.execute(select(OutboxMessage.id).where(_due(now)).limit(1)).first() is not None


def claim_due(conn: Connection, *, now: int, limit: int, lease_ms: int, skip_locked: bool) -> list[OutboxRow]:
    """Take up to `limit` due messages, oldest due first, for `lease_ms`; each one's attempts
    count this attempt. `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer."""
    oldest = select(OutboxMessage.id).where(_due(now)).order_by(OutboxMessage.next_at, OutboxMessage.id).limit(limit)
    if skip_locked:
        oldest = oldest.with_for_update(skip_locked=True)
    rows = conn.execute(
        update(OutboxMessage).where(OutboxMessage.id.in_(oldest), _due(now))
        .values(lease_until=now + lease_ms, attempts=OutboxMessage.attempts + 1)
        .returning(*_OUTBOX_COLUMNS)
    ).all()
    return sorted((OutboxRow.from_row(r) for r in rows), key=lambda r: (r.next_at, r.id))


def _attempt(row_id: int, attempts: int) -> Any:
    """The row as this attempt claimed it: still open, still leased (nothing recorded of the
    attempt yet), and claimed by no one since."""
    return and_(OutboxMessage.id == row_id, OutboxMessage.attempts == attempts, _OPEN,
                OutboxMessage.lease_until.is_not(None))


def delivered(conn: Connection, row_id: int, attempts: int, now: int) -> bool:
    done = conn.execute(update(OutboxMessage).where(_attempt(row_id, attempts))
                        .values(delivered_at=now, lease_until=None))
    return done.rowcount == 1


def retry_at(conn: Connection, row_id: int, attempts: int, next_at: int, error: str) -> bool:
    done = conn.execute(update(OutboxMessage).where(_attempt(row_id, attempts))
                        .values(next_at=next_at, lease_until=None, last_error=error))
    return done.rowcount == 1


def give_up(conn: Connection, row_id: int, attempts: int, now: int, error: str) -> bool:
    done = conn.execute(update(OutboxMessage).where(_attempt(row_id, attempts))
                        .values(given_up_at=now, lease_until=None, last_error=error))
    return done.rowcount == 1


def release(conn: Connection, row_id: int, attempts: int) -> bool:
    """Hand a claimed message back untried (its sender is stopping): due again at once, and
    the attempt it was claimed for is not counted."""
    done = conn.execute(update(OutboxMessage).where(_attempt(row_id, attempts))
                        .values(lease_until=None, attempts=OutboxMessage.attempts - 1))
    return done.rowcount == 1


def give_up_endpoint(conn: Connection, endpoint_id: str, now: int, error: str) -> int:
    """Give up every open message to an endpoint (it was removed)."""
    return conn.execute(
        update(OutboxMessage).where(OutboxMessage.endpoint_id == endpoint_id, _OPEN)
        .values(given_up_at=now, lease_until=None, last_error=error)
    ).rowcount


def recent(conn: Connection, owner: str, *, limit: int, task_id: str | None = None) -> list[OutboxRow]:
    """The owner's latest messages (of the tasks whose ids start with `task_id`), newest first."""
    where = [OutboxMessage.owner == owner]
    if task_id:
        where.append(OutboxMessage.task_id.startswith(task_id, autoescape=True))
    rows = conn.execute(
        select(*_OUTBOX_COLUMNS).where(*where).order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
        .limit(limit)
    ).all()
    return [OutboxRow.from_row(r) for r in rows]


def delete_finished(conn: Connection, created_before: int, *, limit: int = 1000) -> int:
    """Remove up to `limit` delivered or given-up messages created before `created_before`."""
    old = select(OutboxMessage.id).where(OutboxMessage.created_at < created_before, ~_OPEN).limit(limit)
    return conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(old))).rowcount


def _insert_ignoring(conn: Connection, table: Any, rows: Sequence[dict[str, Any]], keys: list[str]) -> None:
    dialect = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(dialect(table).values(list(rows)).on_conflict_do_nothing(index_elements=keys))
