"""API keys: `r2v-<id>-<secret>`. Only SHA-256(secret) is stored; checks run in constant time.

The secret carries 256 random bits, so a fast hash is enough: nobody can search that space,
and a slow hash would only tax every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .db import now_ms
from .models import ApiKey, ServerSecret

__all__ = [
    "KeyInfo",
    "KeyRates",
    "RATE_FIELDS",
    "Principal",
    "create_key",
    "list_keys",
    "revoke_key",
    "set_rates",
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
# A key's own rate limits: its columns, named as the settings they stand in for.
RATE_FIELDS = ("rate_create_per_second", "rate_create_burst", "rate_query_per_second", "rate_query_burst")


@dataclasses.dataclass(frozen=True)
class KeyRates:
    """A key's own rate limits (docs/limits.md): None is the settings' value, a rate of 0 no
    limit for this key, a burst of 0 its rate rounded up."""

    rate_create_per_second: float | None = None
    rate_create_burst: int | None = None
    rate_query_per_second: float | None = None
    rate_query_burst: int | None = None

    @classmethod
    def of(cls, values: Mapping[str, float | int | None]) -> KeyRates:
        """The limits `values` sets (by `RATE_FIELDS` name; any left out is None)."""
        def rate(name: str) -> float | None:
            value = values.get(name)
            return None if value is None else float(value)

        def burst(name: str) -> int | None:
            value = values.get(name)
            return None if value is None else int(value)

        return cls(rate("rate_create_per_second"), burst("rate_create_burst"), rate("rate_query_per_second"),
                   burst("rate_query_burst"))

    @property
    def any(self) -> bool:
        """Whether the key has any limit of its own."""
        return any(getattr(self, name) is not None for name in RATE_FIELDS)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    created_at: int
    revoked_at: int | None
    role: str = "user"
    rates: KeyRates = KeyRates()


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request comes from: the key and the owner whose tasks it may see, and the key's
    own rate limits (None: it has none, the settings apply)."""

    key_id: str
    owner: str
    role: str = "user"
    rates: KeyRates | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: Connection, owner: str = "default", name: str = "", role: str = "user",
               rates: KeyRates = KeyRates()) -> tuple[str, KeyInfo]:
    """A new key; the plain key is returned once and never stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    info = KeyInfo(id=key_id, owner=owner, name=name, created_at=now_ms(), revoked_at=None, role=role, rates=rates)
    conn.execute(insert(ApiKey).values(id=key_id, owner=owner, name=name, secret_hash=_hash(secret),
                                       created_at=info.created_at, role=role, **dataclasses.asdict(rates)))
    return f"{_PREFIX}-{key_id}-{secret}", info


def _rates(row: Any) -> KeyRates:
    return KeyRates(row.rate_create_per_second, row.rate_create_burst, row.rate_query_per_second, row.rate_query_burst)


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [KeyInfo(r.id, r.owner, r.name, r.created_at, r.revoked_at, r.role, _rates(r)) for r in rows]


def set_rates(conn: Connection, key_id: str, changes: dict[str, float | int | None]) -> KeyInfo | None:
    """Set some of a live key's own rate limits (`RATE_FIELDS`; None: back to the settings');
    the key as it is now, or None when there is no such live key."""
    unknown = set(changes) - set(RATE_FIELDS)
    if unknown:
        raise ValueError(f"not a key's rate limit: {', '.join(sorted(unknown))}")
    live = (ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    if changes and conn.execute(update(ApiKey).where(*live).values(**changes)).rowcount != 1:
        return None
    row = conn.execute(select(ApiKey).where(*live)).first()
    return None if row is None else KeyInfo(row.id, row.owner, row.name, row.created_at, row.revoked_at, row.role,
                                            _rates(row))


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


_LIVE = select(ApiKey.owner, ApiKey.secret_hash, ApiKey.role, ApiKey.rate_create_per_second, ApiKey.rate_create_burst,
               ApiKey.rate_query_per_second, ApiKey.rate_query_burst)


def live_key(conn: Connection, key_id: str) -> tuple[str, str, str, KeyRates | None] | None:
    """(owner, secret hash, role, own rate limits or None when it has none) of the live key
    `key_id`, or None when it is unknown or revoked."""
    row = conn.execute(_LIVE.where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))).first()
    if row is None:
        return None
    rates = _rates(row)
    return row.owner, row.secret_hash, row.role, rates if rates.any else None


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
