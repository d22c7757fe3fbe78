"""Managing API keys: make, list, revoke, set a key's own rate limits; and the secrets every
process shares."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from sqlalchemy import Engine

from ..store import keys
from ..store.keys import RATE_FIELDS, ROLES, KeyInfo, KeyRates

__all__ = ["ROLES", "RATE_FIELDS", "KeyInfo", "KeyRates", "MAX_RATE", "MAX_BURST", "create_key", "list_keys",
           "revoke_key", "set_rates", "check_rates", "count_keys", "server_secret", "is_live"]

MAX_RATE = 1e9  # requests a second: far past anything a server answers, and finite
MAX_BURST = 1_000_000_000  # requests at once (the column is a 32-bit integer)


def check_rates(values: Mapping[str, object]) -> dict[str, float | int | None]:
    """Those of `values` that are a key's rate limits (`RATE_FIELDS`), checked: a rate is a
    number of requests a second from 0 (no limit for this key) to `MAX_RATE`, a burst a whole
    number from 0 (the rate rounded up) to `MAX_BURST`, and None either (the settings'). Raises
    `ValueError` naming the first field that breaks its rule."""
    checked: dict[str, float | int | None] = {}
    for name in RATE_FIELDS:
        if name not in values:
            continue
        value = values[name]
        if value is None:
            checked[name] = None
        elif name.endswith("_burst"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BURST:
                raise ValueError(f"{name} must be a whole number of requests from 0 to {MAX_BURST} (0: the rate "
                                 f"rounded up; null: the server's setting), not {_shown(value)}")
            checked[name] = value
        else:
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not 0 <= value <= MAX_RATE):
                raise ValueError(f"{name} must be a number of requests a second from 0 to {MAX_RATE:.0f} (0: no limit "
                                 f"for this key; null: the server's setting), not {_shown(value)}")
            checked[name] = float(value)
    return checked


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def create_key(db: Engine, owner: str = "default", name: str = "", role: str = "user",
               rates: KeyRates | None = None) -> tuple[str, KeyInfo]:
    """A new key for `owner`, with its own rate limits if `rates` sets any; the plain key is
    returned once and never stored."""
    rates = rates or KeyRates()
    check_rates(dataclasses.asdict(rates))
    with db.begin() as conn:
        return keys.create_key(conn, owner=owner, name=name, role=role, rates=rates)


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


def set_rates(db: Engine, key_id: str, changes: Mapping[str, float | int | None]) -> KeyInfo | None:
    """Set some of a live key's own rate limits (checked with `check_rates`; None: back to the
    settings'); the key as it is now, or None when there is no such live key. Every process
    applies them within its authenticator's time to live."""
    with db.begin() as conn:
        return keys.set_rates(conn, key_id, check_rates(changes))


def is_live(db: Engine, key_id: str) -> bool:
    with db.connect() as conn:
        return keys.is_live(conn, key_id)


def server_secret(db: Engine, name: str) -> str:
    """A random secret made once per database and shared by every process using it."""
    with db.begin() as conn:
        return keys.server_secret(conn, name)
