"""Webhook endpoints as their owners manage them: add, list, remove, their secrets, the
delivery log, and the check of a task's own callback URL. One transaction each.

These are what the command line (`ref2video webhooks`) and an admin HTTP API call:

    endpoint, secret = webhooks.add(db, "acme", "https://hooks.acme.example/r2v", ["task.succeeded"])
    webhooks.list(db, "acme")                  # the owner's endpoints (no secrets)
    webhooks.remove(db, "acme", endpoint.id)   # True; its undelivered messages are given up
    webhooks.secret(db, "acme")                # signs the owner's X-Ref2video-Callback deliveries
    webhooks.secret(db, "acme", endpoint.id)   # an endpoint's own secret, again

Bad input raises `InvalidParameter` (an API error, 400). docs/webhooks.md is the guide.
"""

from __future__ import annotations

import builtins
import dataclasses
import secrets as _random
from collections.abc import Iterable
from urllib.parse import urlsplit

from sqlalchemy import Engine

from ..errors import InvalidParameter, clip
from ..store import webhooks as store
from ..store.db import now_ms
from .outbox import ALL_EVENTS, new_secret

__all__ = [
    "Endpoint", "DeliveryInfo", "MAX_ENDPOINTS", "MAX_URL", "CALLBACK_HEADER", "add", "list", "remove", "secret",
    "deliveries", "check_url", "callback_of",
]

MAX_ENDPOINTS = 20  # enabled endpoints per owner
MAX_URL = 2048
CALLBACK_HEADER = "X-Ref2video-Callback"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A registered endpoint (its secret is returned by `add` and `secret`, never listed)."""

    id: str
    owner: str
    url: str
    events: builtins.list[str]
    created_at: int


@dataclasses.dataclass(frozen=True)
class DeliveryInfo:
    """One message of the outbox, as its owner may see it."""

    message_id: str
    event: str
    task_id: str
    endpoint_id: str | None  # None: the task's own callback
    url: str
    state: str  # "pending", "delivered" or "given_up"
    attempts: int
    created_at: int
    next_at: int
    delivered_at: int | None
    given_up_at: int | None
    last_error: str | None


def check_url(url: object, what: str = "url") -> str:
    """`url` if it is an absolute http(s) URL with a host and no credentials; else
    InvalidParameter. Where it leads is checked at every delivery (the address policy)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameter(f"{what} must be an http:// or https:// URL")
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidParameter(f"{what} is longer than {MAX_URL} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidParameter(f"{what} {clip(url)} must be plain ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise InvalidParameter(f"{what} {clip(url)} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidParameter(f"{what} {clip(url)} must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidParameter(f"{what} {clip(url)} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidParameter(f"{what} must not carry credentials; use the signature to trust deliveries")
    return url


def callback_of(header: str | None) -> str | None:
    """The task's callback URL from the `X-Ref2video-Callback` header (None when absent)."""
    if header is None:
        return None
    return check_url(header, CALLBACK_HEADER)


def _events(events: Iterable[str] | None) -> builtins.list[str]:
    if events is None:
        return [*ALL_EVENTS]
    if isinstance(events, str):
        events = [events]
    chosen = {e.strip() for e in events if isinstance(e, str) and e.strip()}
    if "*" in chosen:
        return [*ALL_EVENTS]
    unknown = sorted(chosen - set(ALL_EVENTS))
    if unknown or not chosen:
        raise InvalidParameter(f"events must be some of {', '.join(ALL_EVENTS)}, not {clip(unknown or [])}")
    return [e for e in ALL_EVENTS if e in chosen]


def add(db: Engine, owner: str, url: str, events: Iterable[str] | None = None) -> tuple[Endpoint, str]:
    """Register `url` for `owner`'s task events (all four when `events` is None); the
    endpoint and its signing secret."""
    url = check_url(url)
    chosen = _events(events)
    secret_value = new_secret()
    with db.begin() as conn:
        # The insert first: a transaction that writes first waits for SQLite's lock rather than
        # failing to upgrade a read; one past the cap rolls back with the error.
        row = store.insert_endpoint(conn, id=f"ep_{_random.token_hex(12)}", owner=owner, url=url,
                                    secret=secret_value, events=chosen, now=now_ms())
        if store.count_endpoints(conn, owner) > MAX_ENDPOINTS:
            raise InvalidParameter(f"an owner may have at most {MAX_ENDPOINTS} endpoints; remove one first")
    return Endpoint(row.id, row.owner, row.url, row.events, row.created_at), secret_value


def list(db: Engine, owner: str) -> builtins.list[Endpoint]:  # noqa: A001  (the admin API's name)
    """The owner's endpoints, oldest first."""
    with db.connect() as conn:
        rows = store.list_endpoints(conn, owner)
    return [Endpoint(r.id, r.owner, r.url, r.events, r.created_at) for r in rows]


def remove(db: Engine, owner: str, endpoint_id: str) -> bool:
    """Stop sending to an endpoint; False when the owner has no such endpoint. Its messages
    not yet delivered are given up."""
    now = now_ms()
    with db.begin() as conn:
        if not store.disable_endpoint(conn, owner, endpoint_id, now):
            return False
        store.give_up_endpoint(conn, endpoint_id, now, "the endpoint was removed")
    return True


def secret(db: Engine, owner: str, endpoint_id: str | None = None) -> str | None:
    """The secret of the owner's endpoint, or (no `endpoint_id`) the owner's callback secret,
    made on first use; None when the owner has no such endpoint."""
    with db.begin() as conn:
        if endpoint_id is not None:
            return store.endpoint_secret(conn, owner, endpoint_id)
        return store.owner_secret(conn, owner, new_secret(), now_ms())


def deliveries(db: Engine, owner: str, *, limit: int = 50, task_id: str | None = None) -> builtins.list[DeliveryInfo]:
    """The owner's latest messages (of the tasks whose ids start with `task_id`, if given: an
    id or a prefix of one, as the task commands take), newest first."""
    with db.connect() as conn:
        rows = store.recent(conn, owner, limit=limit, task_id=task_id)
    return [
        DeliveryInfo(
            message_id=r.message_id, event=r.event, task_id=r.task_id, endpoint_id=r.endpoint_id, url=r.url,
            state="delivered" if r.delivered_at else "given_up" if r.given_up_at else "pending",
            attempts=r.attempts, created_at=r.created_at, next_at=r.next_at, delivered_at=r.delivered_at,
            given_up_at=r.given_up_at, last_error=r.last_error,
        )
        for r in rows
    ]
