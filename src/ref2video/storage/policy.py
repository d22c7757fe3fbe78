"""Upload certificates for the SDK's `getPolicy` flow (docs/protocol.md §7).

The SDK sends no API key with the upload itself, so the certificate must carry its authority:
`policy` is base64 JSON naming the owner, the key, the upload folder, the size cap and the
expiry; `signature` is an HMAC of it with the server's secret. Whoever holds a fresh
certificate may put files under that folder, and only there.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import secrets
import time

__all__ = ["UploadGrant", "PolicySigner"]

# Far above what `issue` makes (a few hundred characters; 44 for a signature), far below harm.
_MAX_POLICY = 4096
_MAX_SIGNATURE = 128


@dataclasses.dataclass(frozen=True)
class UploadGrant:
    owner: str
    key_id: str
    upload_dir: str
    max_bytes: int
    expires: int  # epoch seconds


class PolicySigner:
    def __init__(self, secret: str, ttl_seconds: int = 300) -> None:
        self._secret = secret.encode()
        self.ttl_seconds = ttl_seconds

    def issue(self, owner: str, key_id: str, model: str, max_bytes: int) -> tuple[str, str, UploadGrant]:
        """(policy, signature, grant) for a fresh, random upload folder."""
        day = time.strftime("%Y%m%d", time.gmtime())
        folder = f"ref2video-uploads/{day}/{secrets.token_hex(8)}"
        grant = UploadGrant(owner, key_id, folder, max_bytes, int(time.time()) + self.ttl_seconds)
        body = dict(dataclasses.asdict(grant), model=model)
        policy = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
        return policy, self._sign(policy), grant

    def verify(self, policy: object, signature: object) -> UploadGrant | None:
        """The grant of a genuine, unexpired certificate, else None, whatever junk it is given
        (not text, not ASCII, huge, not base64, not the JSON we sign)."""
        if not isinstance(policy, str) or not isinstance(signature, str):
            return None
        if len(policy) > _MAX_POLICY or len(signature) > _MAX_SIGNATURE or not (policy + signature).isascii():
            return None  # compare_digest raises TypeError on non-ASCII text
        if not hmac.compare_digest(self._sign(policy), signature):
            return None
        try:
            body = json.loads(base64.b64decode(policy, validate=True))
            grant = UploadGrant(**{f.name: body[f.name] for f in dataclasses.fields(UploadGrant)})
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(grant.max_bytes, int) and isinstance(grant.expires, int)):
            return None
        return grant if grant.expires >= time.time() else None

    def _sign(self, policy: str) -> str:
        digest = hmac.new(self._secret, policy.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()
