"""Rate limits on the request path (ref2video.app.limits): decided on the event loop when this
process can (no limit, a local bucket, a leased token, a bucket known to be empty), in a thread
when the shared bucket must be asked."""

from __future__ import annotations

from fastapi import Request

from ..app.auth import Principal
from ..app.limits import CREATE, QUERY
from .deps import in_thread, service_of

__all__ = ["admit", "CREATE", "QUERY"]


async def admit(request: Request, principal: Principal, kind: str) -> None:
    """Admit the request against the key's `kind` bucket (its own limits, or the settings'), or
    raise `Throttled` (429)."""
    limits = service_of(request).limits
    if not limits.admit_now(kind, principal.key_id, principal.rates):
        await in_thread(limits.admit, kind, principal.key_id, principal.rates)
