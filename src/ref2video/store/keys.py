"""API keys: `r2v-<id>-<secret>`. Only SHA-256(secret) is stored; checks run in constant time.

The secret carries 256 random bits, so a fast hash is enough: nobody can search that space,
and a slow hash would only tax every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets

from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .db import now_ms
from .models import ApiKey, ServerSecret

__all__ = [
    "KeyInfo",
    "Principal",
    "create_key",
    "list_keys",
    "revoke_key",
    "parse_key",
    "check_secret",
    "live_key",
    "is_live",
    "count_keys",
    "server_secret",
]

_PREFIX = "r2v"
# Compared against when the key id is unknown, so both paths take the same time.
_DUMMY_HASH = hashlib.sha256(b"ref2video-no-such-key").hexdigest()


ROLES = ("user", "admin")  # an admin key may also use the admin API (accounts, keys, webhooks)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    created_at: int
    revoked_at: int | None
    role: str = "user"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request comes from: the key and the owner whose tasks it may see."""

    key_id: str
    owner: str
    role: str = "user"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: Connection, owner: str = "default", name: str = "", role: str = "user") -> tuple[str, KeyInfo]:
    """A new key; the plain key is returned once and never stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    info = KeyInfo(id=key_id, owner=owner, name=name, created_at=now_ms(), revoked_at=None, role=role)
    conn.execute(insert(ApiKey).values(id=key_id, owner=owner, name=name, secret_hash=_hash(secret),
                                       created_at=info.created_at, role=role))
    return f"{_PREFIX}-{key_id}-{secret}", info


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [KeyInfo(r.id, r.owner, r.name, r.created_at, r.revoked_at, r.role) for r in rows]


def count_keys(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(ApiKey)).scalar_one())


def revoke_key(conn: Connection, key_id: str) -> bool:
    """Revoke by id (or by the whole key); False when there is no such live key."""
    parsed = parse_key(key_id)
    key_id = parsed[0] if parsed else key_id
    result = conn.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now_ms())
    )
    return result.rowcount == 1


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    prefix, _, rest = key.partition("-")
    key_id, _, secret = rest.partition("-")
    if prefix != _PREFIX or not key_id or not secret or len(key) > 200:
        return None
    return key_id, secret


def check_secret(secret: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    ok = hmac.compare_digest(_hash(secret), stored_hash or _DUMMY_HASH)
    return ok and stored_hash is not None


def live_key(conn: Connection, key_id: str) -> tuple[str, str, str] | None:
    """(owner, secret hash, role) of the live key `key_id`, or None when it is unknown or revoked."""
    row = conn.execute(
        select(ApiKey.owner, ApiKey.secret_hash, ApiKey.role).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else (row.owner, row.secret_hash, row.role)


def is_live(conn: Connection, key_id: str) -> bool:
    """Whether `key_id` names a key that is not revoked: what a credential issued to that key
    (an upload certificate) checks on each use, so a revocation ends it at once."""
    return live_key(conn, key_id) is not None


def server_secret(conn: Connection, name: str) -> str:
    """A random secret made once per database and shared by every process using it: the first
    process to insert it wins, and everyone reads the winner's."""
    if conn.dialect.name == "postgresql":
        add: Any = pg_insert(ServerSecret).on_conflict_do_nothing()
    else:
        add = sqlite_insert(ServerSecret).on_conflict_do_nothing()
    conn.execute(add.values(name=name, value=secrets.token_urlsafe(32)))
    return str(conn.execute(select(ServerSecret.value).where(ServerSecret.name == name)).scalar_one())
