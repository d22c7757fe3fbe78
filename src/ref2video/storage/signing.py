"""Signed, expiring result URLs: `/v1/results/<key>?expires=<epoch s>&sig=<hmac>`."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from urllib.parse import urlencode

__all__ = ["UrlSigner"]


class UrlSigner:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret.encode()
        self.ttl_seconds = ttl_seconds

    def _sig(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, base_url: str, key: str, now: float | None = None) -> str:
        expires = math.ceil((now or time.time()) + self.ttl_seconds)  # valid at least ttl
        query = urlencode({"expires": expires, "sig": self._sig(key, expires)})
        return f"{base_url.rstrip('/')}/v1/results/{key}?{query}"

    def verify(self, key: str, expires: str, sig: str) -> bool:
        """True when `sig` is ours for `key` and `expires` has not passed. Anything else a
        stranger can put in a link (other digits than ASCII, thousands of them, non-ASCII
        signatures, which compare_digest refuses) is simply not a valid link."""
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12) or int(expires) < time.time():
            return False
        if not sig.isascii():
            return False
        return hmac.compare_digest(self._sig(key, int(expires)), sig)
