"""`_BaseClient`: what `Client` and `AsyncClient` share, with no I/O.

It resolves the configuration, builds every request, reads every answer, and decides what to
retry and how long to wait: transient failures only, that is a connection that could not be made
(any method), a broken or stalled connection on a GET, and HTTP 429 and 503; up to `max_retries`
times with jittered exponential backoff (`backoff * 2**n`, capped at 10 s) or the server's
`Retry-After` (capped at 30 s). A POST (create, upload, cancel) is never sent again once the
server may have taken it.
"""

from __future__ import annotations

import builtins
import logging
import mimetypes
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo, UTC
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias
from urllib.parse import quote
from urllib.request import url2pathname
from zoneinfo import ZoneInfo

import httpx

from ..version import __version__
from ._headers import retry_after
from ._errors import AmbiguousTaskId, ClientError, TaskFailed, TaskNotFound, TransportError, error_for_response
from ._models import Task, TaskPage

__all__ = ["DEFAULT_MODEL", "Reference", "TaskRef"]

log = logging.getLogger("ref2video.client")

Reference: TypeAlias = "str | os.PathLike[str]"
TaskRef: TypeAlias = "str | Task"

DEFAULT_MODEL = "wan2.6-r2v-flash"
# Models that take the media form (`input.media`, `resolution`, `ratio`) instead of reference_urls.
MEDIA_MODELS = frozenset({"wan2.7-r2v"})
_CREATE_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"
_UPLOAD_PATH = "/api/v1/uploads"
_MAX_BACKOFF = 10.0
_MAX_RETRY_AFTER = 30.0
_RETRY_STATUSES = frozenset({429, 503})
_CHUNK = 1 << 16
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_REMOTE = ("http://", "https://", "oss://")
_TIME_FORMAT = "%Y%m%d%H%M%S"
MIN_PREFIX = 4  # the shortest task id prefix `resolve` takes, as git takes for a hash
# A whole id (ours and the provider's are UUIDs) is used as it is, without a list request.
_FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RESOLVE_PAGE = 100
_RESOLVE_SCAN_PAGES = 10  # of a server without task_id_prefix (the provider), scanned by hand
_CANDIDATES = 5  # ids named when a prefix is ambiguous
# The clock that waits keep their deadlines on; looked up at each use, so tests can replace it.
_clock: Callable[[], float] = time.monotonic

# The request never reached the server: safe to send again whatever the method.
_NOT_SENT: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The connection broke or stalled, perhaps after the server acted: safe to repeat only a GET.
_BROKEN: tuple[type[httpx.TransportError], ...] = (
    httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError,
)


class _BaseClient:
    """Configuration, request building, answer parsing and the retry policy; no I/O."""

    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float,
                 max_retries: int, backoff: float, server_timezone: str = "Asia/Shanghai") -> None:
        self.base_url = _resolve_base_url(base_url)
        self.server_timezone = ZoneInfo(server_timezone)  # the zone the server reads list times in
        self.api_key = _resolve_api_key(api_key)
        if max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ClientError("max_retries and backoff must be >= 0 and timeout > 0")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._origin = _origin(httpx.URL(self.base_url))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- requests ---------------------------------------------------------------------------

    def _http_options(self) -> dict[str, Any]:
        return {"timeout": httpx.Timeout(self.timeout), "headers": {"User-Agent": f"ref2video-client/{__version__}"}}

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers_for(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The API key goes to our own server only, never to a result host elsewhere."""
        headers = dict(extra or {})
        if _origin(httpx.URL(url)) == self._origin:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _create_request(self, http: httpx.Client | httpx.AsyncClient, body: dict[str, Any]) -> httpx.Request:
        urls = body["input"].get("reference_urls") or [item["url"] for item in body["input"].get("media", [])]
        extra = {"X-DashScope-Async": "enable"}
        if any(url.startswith("oss://") for url in urls):
            extra["X-DashScope-OssResourceResolve"] = "enable"
        url = self._url(_CREATE_PATH)
        return http.build_request("POST", url, json=body, headers=self._headers_for(url, extra))

    def _upload_request(self, http: httpx.Client | httpx.AsyncClient, file: Path, handle: BinaryIO) -> httpx.Request:
        handle.seek(0)  # a retry sends the file again from the start
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        url = self._url(_UPLOAD_PATH)
        files = {"file": (file.name, handle, kind)}
        return http.build_request("POST", url, files=files, headers=self._headers_for(url))

    def _request(self, http: httpx.Client | httpx.AsyncClient, method: str, path_or_url: str,
                 params: dict[str, str | int] | None = None) -> httpx.Request:
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        return http.build_request(method, url, params=params, headers=self._headers_for(url))

    @staticmethod
    def _create_body(prompt: str, urls: Sequence[str], *, model: str, negative_prompt: str | None,
                     parameters: dict[str, Any], media_types: Sequence[str] | None = None) -> dict[str, Any]:
        """The urls form, or with `media_types` (one per URL) the media form."""
        inputs: dict[str, Any] = {"prompt": prompt}
        if media_types is None:
            inputs["reference_urls"] = builtins.list(urls)
        else:
            inputs["media"] = [{"type": kind, "url": url} for kind, url in zip(media_types, urls)]
        if negative_prompt is not None:
            inputs["negative_prompt"] = negative_prompt
        chosen = {name: value for name, value in parameters.items() if value is not None}
        return {"model": model, "input": inputs, "parameters": chosen}

    def _list_params(self, *, page_no: int, page_size: int, status: str | Sequence[str] | None, model: str | None,
                     start: datetime | None, end: datetime | None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"page_no": page_no, "page_size": page_size}
        if status:
            names = [status] if isinstance(status, str) else builtins.list(status)
            params["status"] = ",".join(name.strip().upper() for name in names)
        if model:
            params["model_name"] = model
        if start is not None:
            params["start_time"] = _server_time(start, self.server_timezone)
        if end is not None:
            params["end_time"] = _server_time(end, self.server_timezone)
        return params

    @staticmethod
    def _prefix(prefix: str) -> str:
        wanted = prefix.strip() if isinstance(prefix, str) else ""
        if len(wanted) < MIN_PREFIX:
            raise ClientError(f"a task id prefix needs at least {MIN_PREFIX} characters, not {prefix!r}")
        return wanted

    @staticmethod
    def _whole_id(prefix: str) -> bool:
        return _FULL_ID.fullmatch(prefix) is not None

    @staticmethod
    def _prefix_params(prefix: str, page_no: int) -> dict[str, str | int]:
        return {"task_id_prefix": prefix, "page_no": page_no, "page_size": _RESOLVE_PAGE}

    @staticmethod
    def _prefix_matches(prefix: str, page: TaskPage) -> tuple[builtins.list[str], bool]:
        """The page's ids that start with `prefix`, and whether the server filtered by it: one
        that does not know the parameter (the provider) lists every task, and is scanned."""
        ids = [item.id for item in page.items]
        matches = [task_id for task_id in ids if task_id.startswith(prefix)]
        return matches, len(matches) == len(ids)

    @staticmethod
    def _one_id(prefix: str, matches: builtins.list[str], count: int) -> str:
        if count == 0 or not matches:
            raise TaskNotFound(prefix)
        if count > 1:
            raise AmbiguousTaskId(prefix, matches[:_CANDIDATES], count)
        return matches[0]

    @staticmethod
    def _scan_more(page: TaskPage) -> bool:
        return page.page_no < min(page.total_page, _RESOLVE_SCAN_PAGES) and bool(page.items)

    @staticmethod
    def _task_path(task: TaskRef, suffix: str = "") -> str:
        task_id = task.id if isinstance(task, Task) else task
        if not isinstance(task_id, str) or not task_id.strip():
            raise ClientError(f"a task id must be a non-empty string, not {task_id!r}")
        return f"/api/v1/tasks/{quote(task_id.strip(), safe='')}{suffix}"

    # -- references -------------------------------------------------------------------------

    @staticmethod
    def _references(references: Sequence[Reference] | Reference) -> builtins.list[str | Path]:
        """Each reference as a URL to send as it is, or a local file to upload first."""
        if isinstance(references, (str, os.PathLike)):
            references = [references]
        return [_reference(ref) for ref in references]

    @staticmethod
    def _media_types(model: str, references: Sequence[str | Path],
                     parameters: dict[str, Any]) -> builtins.list[str] | None:
        """For a media-form model (or when resolution or ratio is given): each reference's
        `type`, from its file name; None for the urls form."""
        if model not in MEDIA_MODELS and parameters.get("resolution") is None and parameters.get("ratio") is None:
            return None
        return [_media_type(ref) for ref in references]

    @staticmethod
    def _local_file(path: str | os.PathLike[str]) -> Path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ClientError(f"reference file not found: {file}")
        return file

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            request = response.request
            raise ClientError(f"{request.method} {request.url} answered HTTP {response.status_code} "
                              f"with something other than a JSON object; is this a ref2video server?")
        return body

    def _uploaded_url(self, response: httpx.Response) -> str:
        url = (self._json(response).get("output") or {}).get("url")
        if not isinstance(url, str) or not url.startswith("oss://"):
            raise ClientError(f"the upload answer has no oss:// URL: {response.text[:200]}")
        return url

    def _created(self, response: httpx.Response) -> Task:
        task = Task.from_json(self._json(response))
        if not task.id:
            raise ClientError(f"the create answer has no task id: {response.text[:200]}")
        return task

    # -- retries ----------------------------------------------------------------------------

    def _delay_after_error(self, exc: httpx.TransportError, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before sending again after `exc`, or None to give up."""
        retriable = _NOT_SENT if not idempotent else _NOT_SENT + _BROKEN
        if attempt >= self.max_retries or not isinstance(exc, retriable):
            return None
        delay = self._backoff(attempt)
        log.info("retrying %s %s in %.2f s after %s", exc.request.method, exc.request.url, delay, _describe(exc))
        return delay

    def _delay_after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending again after a 429 or 503, or None to keep the answer."""
        if response.status_code not in _RETRY_STATUSES or attempt >= self.max_retries:
            return None
        hint = retry_after(response)
        delay = min(hint, _MAX_RETRY_AFTER) if hint is not None else self._backoff(attempt)
        log.info("retrying %s %s in %.2f s after HTTP %d", response.request.method, response.request.url,
                 delay, response.status_code)
        return delay

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2.0**attempt * random.uniform(0.5, 1.0), _MAX_BACKOFF)

    def _failure(self, response: httpx.Response) -> ClientError:
        """The error for a non-2xx answer (whose body has been read)."""
        return error_for_response(response, retry_after=retry_after(response))

    def _unreachable(self, exc: httpx.TransportError, attempts: int) -> TransportError:
        request = exc.request
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return TransportError(f"{request.method} {request.url} failed{tries}: {_describe(exc)}")

    # -- waiting and downloads --------------------------------------------------------------

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else _clock() + timeout

    @staticmethod
    def _pause(deadline: float | None, poll_interval: float) -> float:
        """How long to sleep before the next poll: the interval, or what is left of the deadline."""
        if deadline is None:
            return poll_interval
        return max(0.0, min(poll_interval, deadline - _clock()))

    @staticmethod
    def _timed_out(deadline: float | None) -> bool:
        return deadline is not None and _clock() >= deadline

    @staticmethod
    def _stale(task: TaskRef) -> bool:
        """True when a download must query the task first (an id, or a Task without its video)."""
        return not isinstance(task, Task) or task.status != "SUCCEEDED" or not task.video_url

    @staticmethod
    def _video_url(task: Task) -> str:
        if task.status != "SUCCEEDED" or not task.video_url:
            raise TaskFailed(task, f"task {task.id} is {task.status}, not SUCCEEDED: there is no video to download"
                             + (f" ({task.code}: {task.message})" if task.code else ""))
        return task.video_url

    @staticmethod
    def _download_paths(path: str | os.PathLike[str], task: Task) -> tuple[Path, Path]:
        """(target, temporary file beside it); a directory as `path` gets `<task id>.mp4` inside."""
        target = Path(path).expanduser()
        if target.is_dir():
            target = target / f"{task.id}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")

    @staticmethod
    def _check_finished(task: Task) -> Task:
        if task.status != "SUCCEEDED":
            raise TaskFailed(task)
        return task


# -- helpers ----------------------------------------------------------------------------------


def _resolve_base_url(value: str | None) -> str:
    url = (value or os.environ.get("REF2VIDEO_SERVER") or "").strip().rstrip("/")
    if not url:
        raise ClientError("no server URL: pass base_url (e.g. 'http://127.0.0.1:8000') or set REF2VIDEO_SERVER")
    if not url.lower().startswith(("http://", "https://")):
        raise ClientError(f"the server URL must start with http:// or https://, not {url!r}")
    return url.removesuffix("/api/v1")  # a DashScope-style base URL names the same server


def _resolve_api_key(value: str | None) -> str:
    key = (value or os.environ.get("REF2VIDEO_API_KEY") or "").strip()
    if not key:
        raise ClientError("no API key: pass api_key or set REF2VIDEO_API_KEY (`ref2video keys create` makes one)")
    return key


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _reference(ref: Reference) -> str | Path:
    if isinstance(ref, os.PathLike):
        return Path(os.fspath(ref))
    if not isinstance(ref, str):
        raise ClientError(f"a reference must be a URL or a path, not {type(ref).__name__}")
    lowered = ref.lower()
    if lowered.startswith(_REMOTE):
        return ref
    if lowered.startswith("file://"):
        return _file_url_path(ref)
    if _SCHEME.match(ref):
        raise ClientError(f"unsupported reference {ref[:100]!r}: use http(s)://, oss://, file:// or a local path")
    return Path(ref)


def _file_url_path(url: str) -> Path:
    """`file:///abs/x.png` or `file://localhost/abs/x.png`; also the DashScope SDK's `file://rel/x.png`."""
    rest = url[len("file://"):]
    if rest.lower().startswith("localhost/"):
        rest = rest[len("localhost"):]
    decoded = Path(url2pathname(rest))
    return decoded if decoded.exists() or not Path(rest).exists() else Path(rest)


def _media_type(reference: str | Path) -> str:
    name = reference.name if isinstance(reference, Path) else httpx.URL(reference).path
    kind = (mimetypes.guess_type(name)[0] or "").partition("/")[0]
    if kind not in ("image", "video"):
        raise ClientError(f"cannot tell whether {str(reference)[:200]!r} is an image or a video; "
                          "give it a file name with its extension (.png, .jpg, .mp4, ...)")
    return f"reference_{kind}"


def _server_time(moment: datetime, zone: tzinfo) -> str:
    """`moment` (naive: UTC) as the server reads list times: in its zone, without an offset."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).strftime(_TIME_FORMAT)


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
