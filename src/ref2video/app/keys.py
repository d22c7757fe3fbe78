"""Managing API keys: make, list, revoke; and the secrets every process shares."""

from __future__ import annotations

from sqlalchemy import Engine

from ..store import keys
from ..store.keys import ROLES, KeyInfo

__all__ = ["ROLES", "KeyInfo", "create_key", "list_keys", "revoke_key", "count_keys", "server_secret", "is_live"]


def create_key(db: Engine, owner: str = "default", name: str = "", role: str = "user") -> tuple[str, KeyInfo]:
    """A new key for `owner`; the plain key is returned once and never stored."""
    with db.begin() as conn:
        return keys.create_key(conn, owner=owner, name=name, role=role)


def list_keys(db: Engine) -> list[KeyInfo]:
    with db.connect() as conn:
        return keys.list_keys(conn)


def count_keys(db: Engine) -> int:
    with db.connect() as conn:
        return keys.count_keys(conn)


def revoke_key(db: Engine, key_id: str) -> bool:
    """Revoke by id (or by the whole key); False when there is no such live key. Every process
    stops taking it within its authenticator's time to live."""
    with db.begin() as conn:
        return keys.revoke_key(conn, key_id)


def is_live(db: Engine, key_id: str) -> bool:
    with db.connect() as conn:
        return keys.is_live(conn, key_id)


def server_secret(db: Engine, name: str) -> str:
    """A random secret made once per database and shared by every process using it."""
    with db.begin() as conn:
        return keys.server_secret(conn, name)
