"""Keeping a finished task's result: on SUCCEEDED the video is downloaded at once (the
provider's link dies after 24 h) into our storage, checked to be a video, and the task succeeds
with the provider's usage. Also what the pollers report: an end, a change of state, a gave-up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ...media.sniff import sniff
from ...protocol import Status
from ...storage.base import Storage, StorageUnavailable
from .errors import ProviderError, ProviderTransient
from .parts import RelayParts
from .poller import Flight
from .provider import UpstreamTask
from .reconcile import orig_prompt, same_prompt

__all__ = ["KeepingResults"]

log = logging.getLogger(__name__)

_DOWNLOAD_TRIES = 5


class KeepingResults(RelayParts):
    """The pollers' handler (`poller.py`), and the download of each result."""

    storage: Storage
    scratch: Path
    _downloads: asyncio.Semaphore

    def finished(self, flight: Flight, task: UpstreamTask) -> None:
        self._spawn(self._finish(flight, task))

    def status_changed(self, flight: Flight, status: str) -> None:
        self._statuses[flight.task_id] = status

    def gave_up(self, flight: Flight, code: str, message: str) -> None:
        self._spawn(self._end(flight.task_id, self.manager.fail, code, message))

    def cancel_refused(self, flight: Flight) -> None:
        # The provider started the task before our cancel reached it. The owner was told the
        # cancel was accepted, so the task ends CANCELED here and its result is not kept.
        self._spawn(self._end(flight.task_id, self.manager.canceled))

    async def _finish(self, flight: Flight, task: UpstreamTask) -> None:
        if task.status == Status.CANCELED.value or flight.cancel:  # the owner's cancel stands
            await self._end(flight.task_id, self.manager.canceled)
        elif task.status == Status.FAILED.value:
            await self._end(flight.task_id, self.manager.fail, task.code or "InternalError",
                            task.message or "the provider failed the task without saying why")
        elif flight.prompt is not None and not same_prompt(orig_prompt(task), flight.prompt):
            await self._end(flight.task_id, self.manager.fail, "InternalError.SubmitUnconfirmed",
                            "the provider task found for this interrupted submit was made from another prompt")
        elif not task.video_url:
            await self._end(flight.task_id, self.manager.fail, "InternalError",
                            "the provider reported success without a video_url")
        else:
            async with self._downloads:
                await self._keep_result(flight, task)

    async def _keep_result(self, flight: Flight, task: UpstreamTask) -> None:
        """Download the video into our storage and succeed the task with the provider's usage."""
        assert self.provider is not None and task.video_url is not None
        part = self.scratch / f"{flight.task_id}.mp4"
        key = f"{flight.task_id}-{flight.upstream_id[:8]}.mp4"
        try:
            for attempt in range(1, _DOWNLOAD_TRIES + 1):
                try:
                    await self.provider.download(task.video_url, part, self.settings.dashscope_max_result_bytes)
                    break
                except ProviderTransient as exc:
                    if attempt == _DOWNLOAD_TRIES:
                        await self._end(flight.task_id, self.manager.fail, "InternalError.ResultDownload",
                                        f"{exc.message} (gave up after {attempt} tries)")
                        return
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
                except ProviderError as exc:
                    await self._end(flight.task_id, self.manager.fail, exc.code, exc.message)
                    return
            if not _is_video(part):
                await self._end(flight.task_id, self.manager.fail, "InternalError.ResultDownload",
                                "the provider's result is not an MP4 or MOV video")
                return
            for attempt in range(1, _DOWNLOAD_TRIES + 1):
                try:
                    await self._call(self.storage.put, key, part)
                    break
                except StorageUnavailable as exc:  # the bucket is down or slow: a while, then give up
                    if attempt == _DOWNLOAD_TRIES:
                        await self._end(flight.task_id, self.manager.fail, "StorageUnavailable",
                                        f"{exc.message} (gave up after {attempt} tries)")
                        return
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
            ended = await self._end(flight.task_id, self.manager.succeed, result_key=key, usage=dict(task.usage))
            if ended is not Status.SUCCEEDED:  # canceled meanwhile, or no longer ours
                await self._call(self.storage.delete, key)
        finally:
            part.unlink(missing_ok=True)


def _is_video(path: Path) -> bool:
    with path.open("rb") as f:
        found = sniff(f.read(64))
    return found is not None and found.kind == "video"
