"""Submitting a task to the provider: our own uploads first (its getPolicy flow), then the
intent is recorded, the task is sent, and its upstream id is recorded. A crash between the two
writes leaves an orphan to reconcile (`reconcile.py`), never a second submit."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ...spec import TaskSpec, oss_key
from ..base import HeldTask
from .errors import ProviderError, ProviderTransient
from .parts import RelayParts

__all__ = ["Submitting", "provider_body", "account_of"]

log = logging.getLogger(__name__)


def account_of(api_key: str) -> str:
    """The account name stored with a task: a fingerprint of the key, never the key."""
    return hashlib.sha256(api_key.strip().encode()).hexdigest()[:16]


def provider_body(spec: TaskSpec, model: str, resolve: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The create body the provider expects, rebuilt from a checked spec in the form the client
    sent (docs/protocol.md §9 lists what goes: defaults filled in, unknown keys left out);
    `resolve` replaces URLs (our uploads, sent on to the provider's storage) by the provider's own."""
    def url(u: str) -> str:
        return (resolve or {}).get(u, u)

    inputs: dict[str, Any] = {"prompt": spec.prompt}
    if spec.negative_prompt:
        inputs["negative_prompt"] = spec.negative_prompt
    if spec.form == "media":
        inputs["media"] = [
            {"type": item.type, "url": url(item.url),
             **({"reference_voice": url(item.reference_voice)} if item.reference_voice else {})}
            for item in spec.media
        ]
        parameters: dict[str, Any] = {"resolution": spec.resolution, "ratio": spec.ratio,
                                      "prompt_extend": spec.prompt_extend}
    else:
        inputs["reference_urls"] = [url(u) for u in spec.reference_urls]
        parameters = {"size": spec.size, "shot_type": spec.shot_type, "audio": spec.audio}
    parameters.update(duration=spec.duration, watermark=spec.watermark, seed=spec.seed)
    return {"model": model, "input": inputs, "parameters": parameters}


class Submitting(RelayParts):
    async def _submit(self, task: HeldTask) -> None:
        assert self.provider is not None
        spec = TaskSpec.from_json(task.spec)
        model = self.models[task.model]
        k = self.provider.next_key()
        try:
            resolved, uploaded = await self._references(task, spec, model, k)
        except ProviderError as exc:
            await self._end(task.id, self.manager.fail, exc.code, exc.message)
            return
        except ProviderTransient as exc:
            await self._retry(task, exc)
            return
        if resolved is None:
            return
        if task.id in self._cancel_asked:
            await self._end(task.id, self.manager.canceled)
            return
        # The turn first, the intent just before sending: a crash between the two writes
        # leaves an orphan to reconcile, so that gap is kept as short as it can be.
        await self.submit_limiters[k].acquire()
        intent = await self._call(self.manager.intend, task.id, self.accounts[k])
        if intent is None:
            self._held.discard(task.id)  # no longer ours
            return
        try:
            upstream = await self.provider.submit(provider_body(spec, model, resolved), oss=uploaded, key_index=k)
        except ProviderError as exc:
            await self._end(task.id, self.manager.fail, exc.code, exc.message)
            return
        except ProviderTransient as exc:
            if exc.uncertain:  # it may exist upstream: find it rather than send it again
                log.warning("relay: submit of task %s may have reached the provider (%s); reconciling",
                            task.id, exc.message)
                await self._reconcile(task, k, intent, live=True)
            else:
                await self._call(self.manager.clear_intent, task.id)
                await self._retry(task, exc)
            return
        if not await self._call(self.manager.record, task.id, upstream.task_id, upstream.status):
            # Our lease lapsed meanwhile: whoever holds the task now reconciles and adopts it.
            log.error("relay: task %s was submitted as %s but is no longer ours", task.id, upstream.task_id)
            self._held.discard(task.id)
            return
        self._watch(task, k, upstream.task_id, intent, upstream.status, None)

    async def _references(self, task: HeldTask, spec: TaskSpec, model: str,
                          k: int) -> tuple[dict[str, str] | None, bool]:
        """Our own uploads among the task's files, sent on to the provider's storage: our
        `oss://` URL -> the provider's. Public URLs go as they are (the provider fetches and
        checks them). None when a file is not the owner's (the task has failed)."""
        assert self.provider is not None
        resolved: dict[str, str] = {}
        for what, url in spec.all_urls:
            key = oss_key(url)
            if not key or url in resolved:
                continue
            path = await self._call(self.resolve_upload, task.owner, key)
            if path is None:
                await self._end(task.id, self.manager.fail, "InvalidURL",
                                f"{what}: {url} is not one of your uploads, or it has expired")
                return None, False
            await self.submit_limiters[k].acquire()
            resolved[url] = await self.provider.upload(path, model, key_index=k, name=PurePosixPath(key).name)
        return resolved, bool(resolved)
