"""API keys: `r2v-<id>-<secret>`. Only SHA-256(secret) is stored; checks run in constant time.

The secret carries 256 random bits, so a fast hash is enough: nobody can search that space,
and a slow hash would only tax every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

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
    "authenticate",
    "is_live",
    "count_keys",
    "server_secret",
]

_PREFIX = "r2v"
# Compared against when the key id is unknown, so both paths take the same time.
_DUMMY_HASH = hashlib.sha256(b"ref2video-no-such-key").hexdigest()


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    created_at: int
    revoked_at: int | None


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request comes from: the key and the owner whose tasks it may see."""

    key_id: str
    owner: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(engine: Engine, owner: str = "default", name: str = "") -> tuple[str, KeyInfo]:
    """A new key; the plain key is returned once and never stored."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    info = KeyInfo(id=key_id, owner=owner, name=name, created_at=now_ms(), revoked_at=None)
    with engine.begin() as conn:
        conn.execute(
            insert(ApiKey).values(
                id=key_id, owner=owner, name=name, secret_hash=_hash(secret),
                created_at=info.created_at,
            )
        )
    return f"{_PREFIX}-{key_id}-{secret}", info


def list_keys(engine: Engine) -> list[KeyInfo]:
    with engine.connect() as conn:
        rows = conn.execute(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [KeyInfo(r.id, r.owner, r.name, r.created_at, r.revoked_at) for r in rows]


def count_keys(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ApiKey)).scalar_one()


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke by id (or by the whole key); False when there is no such live key."""
    parsed = parse_key(key_id)
    key_id = parsed[0] if parsed else key_id
    with engine.begin() as conn:
        result = conn.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now_ms())
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


def authenticate(engine: Engine, key: str) -> Principal | None:
    """The principal of a live key, or None."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiKey.owner, ApiKey.secret_hash).where(
                ApiKey.id == key_id, ApiKey.revoked_at.is_(None)
            )
        ).first()
    if not check_secret(secret, row.secret_hash if row else None):
        return None
    assert row is not None
    return Principal(key_id=key_id, owner=row.owner)


def is_live(engine: Engine, key_id: str) -> bool:
    """Whether `key_id` names a key that is not revoked: what a credential issued to that key
    (an upload certificate) checks on each use, so a revocation ends it at once."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        ).first()
    return row is not None


def server_secret(engine: Engine, name: str) -> str:
    """A random secret made once per database and shared by every process using it."""
    with engine.begin() as conn:
        value = conn.execute(select(ServerSecret.value).where(ServerSecret.name == name)).scalar()
        if value is not None:
            return value
    candidate = secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(insert(ServerSecret).values(name=name, value=candidate))
        return candidate
    except IntegrityError:  # another process made it first: use theirs
        with engine.connect() as conn:
            return conn.execute(
                select(ServerSecret.value).where(ServerSecret.name == name)
            ).scalar_one()
