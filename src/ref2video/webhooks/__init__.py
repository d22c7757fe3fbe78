"""Webhook delivery: the sender (a thread per process) and one signed, checked POST.

post     one Standard Webhooks POST to a checked, pinned address; no redirects
sender   `Sender`: claims due outbox messages with a lease, sends them, records how it went

The outbox itself (what is queued, claimed and recorded) is `ref2video.app.outbox`; endpoints
are `ref2video.app.webhooks`; docs/webhooks.md is the guide.
"""

from __future__ import annotations

from .sender import Sender, SenderSettings

__all__ = ["Sender", "SenderSettings"]
