"""`Client` and `AsyncClient`: the task API over httpx, with uploads, waiting, downloads and retries.

Both are written out in parallel on top of `_BaseClient` (`_base.py`), as httpx does: the same
method names, awaitable in the async one, whose `close()` is `aclose()`. Only sending, sleeping
and streaming differ between them.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from ._base import _CHUNK, DEFAULT_MODEL, Reference, _BaseClient
from ._errors import WaitTimeout
from ._models import Task, TaskPage

__all__ = ["Client", "AsyncClient"]

# What waits and retries sleep with; looked up at each call, so tests can record the delays.
_sleep: Callable[[float], None] = time.sleep
_async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class Client(_BaseClient):
    """A client for a ref2video (or DashScope-compatible) server.

    ```python
    from ref2video.client import Client

    with Client("http://127.0.0.1:8000", "r2v-...") as client:   # or REF2VIDEO_SERVER / REF2VIDEO_API_KEY
        task = client.generate("character1 waves at character2", ["hero.png", "https://example.com/b.mp4"],
                               "out.mp4", size="1280*720", duration=5,
                               on_progress=lambda t: print(t.status, t.progress))
        print(task.usage)

        task = client.create("character1 walks", ["https://example.com/a.png"])
        task = client.wait(task, timeout=600)
        if task.status == "SUCCEEDED":
            client.download(task, "walk.mp4")
    ```

    Local files among the references are uploaded first (`POST /api/v1/uploads`) and sent as
    their `oss://` URLs. Errors are `ClientError` subclasses (see `ref2video.client._errors`).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, backoff: float = 0.5, transport: httpx.BaseTransport | None = None,
                 server_timezone: str = "Asia/Shanghai") -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         server_timezone=server_timezone)
        self._http = httpx.Client(transport=transport, **self._http_options())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API ----------------------------------------------------------------------------

    def create(self, prompt: str, references: Sequence[Reference], *, model: str = DEFAULT_MODEL,
               negative_prompt: str | None = None, size: str | None = None, duration: int | None = None,
               shot_type: str | None = None, audio: bool | None = None, watermark: bool | None = None,
               seed: int | None = None, resolution: str | None = None, ratio: str | None = None) -> Task:
        """Create a task (PENDING); local files among `references` are uploaded first, in order.

        wan2.7-r2v (or `resolution`/`ratio`) sends the media form: each reference's type comes
        from its file name, and the prompt names them Image 1, Video 1, ..."""
        refs = self._references(references)
        parameters = dict(size=size, duration=duration, shot_type=shot_type, audio=audio, watermark=watermark,
                          seed=seed, resolution=resolution, ratio=ratio)
        types = self._media_types(model, refs, parameters)
        urls = [ref if isinstance(ref, str) else self.upload(ref) for ref in refs]
        body = self._create_body(prompt, urls, model=model, negative_prompt=negative_prompt, parameters=parameters,
                                 media_types=types)
        return self._created(self._send(lambda: self._create_request(self._http, body), idempotent=False))

    def upload(self, path: str | os.PathLike[str]) -> str:
        """Upload a local file for use as a reference; its `oss://` URL (valid for this key's owner)."""
        file = self._local_file(path)
        with file.open("rb") as handle:
            response = self._send(lambda: self._upload_request(self._http, file, handle), idempotent=False)
        return self._uploaded_url(response)

    def get(self, task_id: str | Task) -> Task:
        """The task as it is now (UNKNOWN for an id this key cannot see)."""
        return Task.from_json(self._json(self._get(self._task_path(task_id))))

    def wait(self, task_id: str | Task, *, timeout: float | None = None, poll_interval: float = 1.0,
             on_progress: Callable[[Task], None] | None = None) -> Task:
        """Poll until the task is done and return it, whatever the outcome (FAILED does not raise).

        `on_progress` is called with every poll's answer; `WaitTimeout` is raised when `timeout`
        seconds pass first.
        """
        deadline = self._deadline(timeout)
        while True:
            task = self.get(task_id)
            if on_progress is not None:
                on_progress(task)
            if task.done:
                return task
            if self._timed_out(deadline):
                raise WaitTimeout(task, timeout or 0.0)
            _sleep(self._pause(deadline, poll_interval))

    def cancel(self, task_id: str | Task) -> None:
        """Cancel a PENDING task (or ask a RUNNING one to stop); `InvalidRequest` when it is too late."""
        self._send(lambda: self._request(self._http, "POST", self._task_path(task_id, "/cancel")), idempotent=False)

    def list(self, *, page_no: int = 1, page_size: int = 10, status: str | Sequence[str] | None = None,
             model: str | None = None, start: datetime | None = None, end: datetime | None = None) -> TaskPage:
        """One page of this key's tasks, newest first.

        `start` and `end` bound the submit time; aware datetimes are converted to UTC, naive ones are
        read in the server's time zone (UTC unless it is configured otherwise).
        """
        params = self._list_params(page_no=page_no, page_size=page_size, status=status, model=model,
                                   start=start, end=end)
        return TaskPage.from_json(self._json(self._get("/api/v1/tasks", params)))

    def resolve(self, prefix: str) -> str:
        """The one task id that starts with `prefix` (at least 4 characters), as git finds a hash.

        `TaskNotFound` when none of this key's tasks does, `AmbiguousTaskId` (naming a few) when
        several do. A whole id is returned as it is, without asking. A server without ref2video's
        `task_id_prefix` filter (the provider) has its newest 1,000 tasks searched instead.
        """
        wanted = self._prefix(prefix)
        if self._whole_id(wanted):
            return wanted
        found: builtins.list[str] = []
        page_no = 1
        while True:
            page = TaskPage.from_json(self._json(self._get("/api/v1/tasks", self._prefix_params(wanted, page_no))))
            matches, filtered = self._prefix_matches(wanted, page)
            if filtered and page_no == 1:
                return self._one_id(wanted, matches, page.total)
            found += matches
            if not self._scan_more(page):
                return self._one_id(wanted, found, len(found))
            page_no += 1

    def download(self, task: str | Task, path: str | os.PathLike[str]) -> Path:
        """Save a SUCCEEDED task's video to `path` (a file, or a directory for `<id>.mp4`); the path.

        The file appears only when complete (written beside it, then renamed). `TaskFailed` when
        the task has no video.
        """
        final = self.get(task) if self._stale(task) else task
        assert isinstance(final, Task)
        url = self._video_url(final)
        target, partial = self._download_paths(path, final)
        try:
            with partial.open("xb") as out:
                self._stream_to(url, out)
            os.replace(partial, target)
        finally:
            with suppress(FileNotFoundError):
                partial.unlink()
        return target

    def generate(self, prompt: str, references: Sequence[Reference], output: str | os.PathLike[str], *,
                 timeout: float | None = None, on_progress: Callable[[Task], None] | None = None,
                 poll_interval: float = 1.0, **parameters: Any) -> Task:
        """Create, wait and download: the SUCCEEDED task, its video saved at `output`.

        `parameters` are `create()`'s keywords. `TaskFailed` (with `.task`) when the task ends
        FAILED, CANCELED or UNKNOWN; `WaitTimeout` after `timeout` seconds.
        """
        task = self.create(prompt, references, **parameters)
        task = self._check_finished(self.wait(task, timeout=timeout, poll_interval=poll_interval,
                                              on_progress=on_progress))
        self.download(task, output)
        return task

    # -- sending ----------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str | int] | None = None) -> httpx.Response:
        return self._send(lambda: self._request(self._http, "GET", path, params), idempotent=True)

    def _stream_to(self, url: str, out: BinaryIO) -> None:
        response = self._send(lambda: self._request(self._http, "GET", url), idempotent=True, stream=True)
        try:
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, 1) from exc
        finally:
            response.close()

    def _send(self, build: Callable[[], httpx.Request], *, idempotent: bool, stream: bool = False) -> httpx.Response:
        """Send, retrying transient failures; a 2xx answer or the typed error."""
        attempt = 0
        while True:
            try:
                response = self._http.send(build(), stream=stream, follow_redirects=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_error(exc, attempt, idempotent)
                if delay is None:
                    raise self._unreachable(exc, attempt + 1) from exc
            else:
                delay = self._delay_after_response(response, attempt)
                if delay is None:
                    return self._checked(response)
                response.close()
            attempt += 1
            _sleep(delay)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            response.read()
        except httpx.TransportError as exc:
            raise self._unreachable(exc, 1) from exc
        finally:
            response.close()
        raise self._failure(response)


class AsyncClient(_BaseClient):
    """The asyncio twin of `Client`: the same methods, awaitable, and `aclose()`.

    ```python
    import asyncio
    from ref2video.client import AsyncClient

    async def main() -> None:
        async with AsyncClient("http://127.0.0.1:8000", "r2v-...") as client:
            task = await client.create("character1 waves", ["hero.png", "friend.png"])  # both upload at once
            task = await client.wait(task, on_progress=lambda t: print(t.status, t.progress))
            await client.download(task, "wave.mp4")

    asyncio.run(main())
    ```
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, backoff: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, server_timezone: str = "Asia/Shanghai") -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         server_timezone=server_timezone)
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API ----------------------------------------------------------------------------

    async def create(self, prompt: str, references: Sequence[Reference], *, model: str = DEFAULT_MODEL,
                     negative_prompt: str | None = None, size: str | None = None, duration: int | None = None,
                     shot_type: str | None = None, audio: bool | None = None, watermark: bool | None = None,
                     seed: int | None = None, resolution: str | None = None, ratio: str | None = None) -> Task:
        """Create a task (PENDING); local files among `references` are uploaded first, concurrently.
        wan2.7-r2v (or `resolution`/`ratio`) sends the media form, as `Client.create` does."""
        refs = self._references(references)
        parameters = dict(size=size, duration=duration, shot_type=shot_type, audio=audio, watermark=watermark,
                          seed=seed, resolution=resolution, ratio=ratio)
        types = self._media_types(model, refs, parameters)
        urls = await self._upload_all(refs)
        body = self._create_body(prompt, urls, model=model, negative_prompt=negative_prompt, parameters=parameters,
                                 media_types=types)
        return self._created(await self._send(lambda: self._create_request(self._http, body), idempotent=False))

    async def upload(self, path: str | os.PathLike[str]) -> str:
        """Upload a local file for use as a reference; its `oss://` URL (valid for this key's owner)."""
        file = self._local_file(path)
        with file.open("rb") as handle:
            response = await self._send(lambda: self._upload_request(self._http, file, handle), idempotent=False)
        return self._uploaded_url(response)

    async def get(self, task_id: str | Task) -> Task:
        """The task as it is now (UNKNOWN for an id this key cannot see)."""
        return Task.from_json(self._json(await self._get(self._task_path(task_id))))

    async def wait(self, task_id: str | Task, *, timeout: float | None = None, poll_interval: float = 1.0,
                   on_progress: Callable[[Task], None] | None = None) -> Task:
        """Poll until the task is done and return it, whatever the outcome (FAILED does not raise)."""
        deadline = self._deadline(timeout)
        while True:
            task = await self.get(task_id)
            if on_progress is not None:
                on_progress(task)
            if task.done:
                return task
            if self._timed_out(deadline):
                raise WaitTimeout(task, timeout or 0.0)
            await _async_sleep(self._pause(deadline, poll_interval))

    async def cancel(self, task_id: str | Task) -> None:
        """Cancel a PENDING task (or ask a RUNNING one to stop); `InvalidRequest` when it is too late."""
        await self._send(lambda: self._request(self._http, "POST", self._task_path(task_id, "/cancel")),
                         idempotent=False)

    async def list(self, *, page_no: int = 1, page_size: int = 10, status: str | Sequence[str] | None = None,
                   model: str | None = None, start: datetime | None = None, end: datetime | None = None) -> TaskPage:
        """One page of this key's tasks, newest first (see `Client.list`)."""
        params = self._list_params(page_no=page_no, page_size=page_size, status=status, model=model,
                                   start=start, end=end)
        return TaskPage.from_json(self._json(await self._get("/api/v1/tasks", params)))

    async def resolve(self, prefix: str) -> str:
        """The one task id that starts with `prefix` (see `Client.resolve`)."""
        wanted = self._prefix(prefix)
        if self._whole_id(wanted):
            return wanted
        found: builtins.list[str] = []
        page_no = 1
        while True:
            answer = await self._get("/api/v1/tasks", self._prefix_params(wanted, page_no))
            page = TaskPage.from_json(self._json(answer))
            matches, filtered = self._prefix_matches(wanted, page)
            if filtered and page_no == 1:
                return self._one_id(wanted, matches, page.total)
            found += matches
            if not self._scan_more(page):
                return self._one_id(wanted, found, len(found))
            page_no += 1

    async def download(self, task: str | Task, path: str | os.PathLike[str]) -> Path:
        """Save a SUCCEEDED task's video to `path` (see `Client.download`); the path."""
        final = await self.get(task) if self._stale(task) else task
        assert isinstance(final, Task)
        url = self._video_url(final)
        target, partial = self._download_paths(path, final)
        try:
            with partial.open("xb") as out:
                await self._stream_to(url, out)
            os.replace(partial, target)
        finally:
            with suppress(FileNotFoundError):
                partial.unlink()
        return target

    async def generate(self, prompt: str, references: Sequence[Reference], output: str | os.PathLike[str], *,
                       timeout: float | None = None, on_progress: Callable[[Task], None] | None = None,
                       poll_interval: float = 1.0, **parameters: Any) -> Task:
        """Create, wait and download (see `Client.generate`)."""
        task = await self.create(prompt, references, **parameters)
        task = self._check_finished(await self.wait(task, timeout=timeout, poll_interval=poll_interval,
                                                    on_progress=on_progress))
        await self.download(task, output)
        return task

    # -- sending ----------------------------------------------------------------------------

    async def _upload_all(self, references: builtins.list[str | Path]) -> builtins.list[str]:
        """URLs as they are and local files uploaded, concurrently; on a failure the rest are cancelled."""
        jobs = [asyncio.ensure_future(self.upload(ref)) for ref in references if not isinstance(ref, str)]
        try:
            uploaded = iter(await asyncio.gather(*jobs))
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        return [ref if isinstance(ref, str) else next(uploaded) for ref in references]

    async def _get(self, path: str, params: dict[str, str | int] | None = None) -> httpx.Response:
        return await self._send(lambda: self._request(self._http, "GET", path, params), idempotent=True)

    async def _stream_to(self, url: str, out: BinaryIO) -> None:
        response = await self._send(lambda: self._request(self._http, "GET", url), idempotent=True, stream=True)
        try:
            async for chunk in response.aiter_bytes(_CHUNK):
                out.write(chunk)  # local disk writes are short next to the network
        except httpx.TransportError as exc:
            raise self._unreachable(exc, 1) from exc
        finally:
            await response.aclose()

    async def _send(self, build: Callable[[], httpx.Request], *, idempotent: bool,
                    stream: bool = False) -> httpx.Response:
        """Send, retrying transient failures; a 2xx answer or the typed error."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(build(), stream=stream, follow_redirects=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_error(exc, attempt, idempotent)
                if delay is None:
                    raise self._unreachable(exc, attempt + 1) from exc
            else:
                delay = self._delay_after_response(response, attempt)
                if delay is None:
                    return await self._checked(response)
                await response.aclose()
            attempt += 1
            await _async_sleep(delay)

    async def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise self._unreachable(exc, 1) from exc
        finally:
            await response.aclose()
        raise self._failure(response)
