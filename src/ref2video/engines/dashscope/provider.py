"""`ProviderClient`: the provider's task protocol (docs/protocol.md) spoken from our side, on httpx.

Each method makes one request and maps every way it can go wrong to `ProviderError`
(permanent) or `ProviderTransient` (worth another try), `raise ... from` the httpx error. It
never retries by itself: the relay owns the schedule, the retry budget and the rate limits,
and a submit whose answer was lost must be reconciled through the task list, not sent again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import mimetypes
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo, UTC
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ... import metrics
from ...client import retry_after
from ...version import __version__
from ...protocol import TERMINAL
from .errors import ProviderError, ProviderTransient
from .limiter import RateLimiter, Turn, take_turns

__all__ = ["ProviderClient", "UpstreamTask", "UpstreamSummary"]

_CREATE_PATH = "/services/aigc/video-generation/video-synthesis"
_TIME_FORMAT = "%Y%m%d%H%M%S"
_DONE = frozenset(status.value for status in TERMINAL)
_MAX_ANSWER_BYTES = 1 << 20  # an API answer is a few hundred bytes; anything near this is broken
_CHUNK = 1 << 16
_SNIPPET = 200
# Codes for error answers that carry no envelope of their own (a proxy's HTML page, an OSS XML).
_FALLBACK_CODES = {401: "InvalidApiKey", 403: "AccessDenied", 404: "NotFound", 408: "RequestTimeOut",
                   413: "RequestTooLarge", 429: "Throttling", 503: "ServiceUnavailable"}
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{1,500})</\1>")
# httpx's failures that mean nothing was sent: a limiter's turn is given back on these.
_NEVER_SENT = (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError)


@dataclass(frozen=True, slots=True)
class UpstreamTask:
    """One answer about one provider task; `key_index` names the account that owns it.

    ```python
    task = await provider.get(task_id, key_index=k)
    if task.status == "SUCCEEDED":
        await provider.download(task.video_url, path, max_bytes=1 << 30)
    ```
    """

    task_id: str
    status: str  # the provider's state string: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN
    key_index: int = 0
    video_url: str | None = None
    code: str | None = None
    message: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    submit_time: str | None = None
    end_time: str | None = None
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        """SUCCEEDED, FAILED or CANCELED. UNKNOWN is not: right after a submit it can mean
        "not visible yet"; the relay decides when it means "lost"."""
        return self.status in _DONE

    @classmethod
    def from_json(cls, body: Mapping[str, Any], key_index: int) -> UpstreamTask:
        output = body.get("output")
        if not isinstance(output, dict) or not isinstance(output.get("task_id"), str) \
                or not isinstance(output.get("task_status"), str):
            raise ValueError("no output.task_id and output.task_status")
        usage = body.get("usage")
        return cls(
            task_id=output["task_id"], status=output["task_status"], key_index=key_index,
            video_url=_str(output.get("video_url")), code=_str(output.get("code")),
            message=_str(output.get("message")), usage=dict(usage) if isinstance(usage, dict) else {},
            submit_time=_str(output.get("submit_time")), end_time=_str(output.get("end_time")),
            request_id=_str(body.get("request_id")), raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class UpstreamSummary:
    """One row of the provider's task list (times in epoch milliseconds)."""

    task_id: str
    status: str
    model_name: str | None = None
    gmt_create: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    key_index: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, item: Mapping[str, Any], key_index: int) -> UpstreamSummary:
        if not isinstance(item.get("task_id"), str) or not isinstance(item.get("status"), str):
            raise ValueError("a list item without task_id and status")
        return cls(
            task_id=item["task_id"], status=item["status"], model_name=_str(item.get("model_name")),
            gmt_create=_int(item.get("gmt_create")), start_time=_int(item.get("start_time")),
            end_time=_int(item.get("end_time")), key_index=key_index, raw=dict(item),
        )


class ProviderClient:
    """An async client of the provider's task API, for one region and one or more accounts.

    ```python
    async with ProviderClient("https://dashscope.aliyuncs.com/api/v1", ["sk-a", "sk-b"],
                              timeout=30, limiters=[RateLimiter(20), RateLimiter(20)]) as provider:
        k = provider.next_key()                               # one account for the whole task
        ref = await provider.upload(Path("hero.png"), "wan2.6-r2v-flash", key_index=k)
        body["input"]["reference_urls"] = [ref]
        task = await provider.submit(body, oss=True, key_index=k)
        task = await provider.get(task.task_id, key_index=task.key_index)
        if task.status == "SUCCEEDED":
            await provider.download(task.video_url, Path("out.mp4"), max_bytes=500 << 20)
    ```

    `timeout` bounds each API call as a whole (connect, send and read); waiting for a limiter's
    turn does not count (waiting for a place in its window, just before writing, does). With
    `limiters` (one per key), every API call made with key i first waits for `limiters[i]`; the
    storage and download hosts are not the API and are not limited.
    Every API call also takes the turns its task acquired from any `RateLimiter` beforehand
    (`limiter.take_turns`): each takes a place in its limiter's window just before the request
    is written (waiting for one if none is free) and learns how the call ended, so the limiters
    count calls as they go, not as they are granted.
    Times sent to the task list are written in `tz`, the zone the provider reads them in.
    The keys go to the API's origin only, never to the upload or download hosts.
    """

    def __init__(self, base_url: str, api_keys: Sequence[str], *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 limiters: Sequence[RateLimiter] | None = None, tz: tzinfo = UTC) -> None:
        self.base_url = _checked_base_url(base_url)
        self._keys = [key.strip() for key in api_keys if isinstance(key, str) and key.strip()]
        if not self._keys or len(self._keys) != len(api_keys):
            raise ValueError("api_keys must be one or more non-empty strings")
        if limiters is not None and len(limiters) != len(self._keys):
            raise ValueError(f"one limiter per key: {len(self._keys)} keys, {len(limiters)} limiters")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self.tz = tz
        self._limiters = builtins.list(limiters) if limiters is not None else None
        # httpx's own transport writes through httpcore, whose `trace` tells a call's turns the
        # moment its bytes go out; under another (a test's MockTransport) they count from the send.
        self._traced = transport is None or isinstance(transport, httpx.AsyncHTTPTransport)
        self._turns = itertools.cycle(range(len(self._keys)))
        # A call that waited for its limiter's turn must not then wait for a connection: it
        # would leave late, together with later ones, and arrive as a burst. So the pool is
        # larger than the calls a relay has in flight (lanes, submits, downloads).
        self._http = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=False,
            headers={"User-Agent": f"ref2video-relay/{__version__}"},
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    def __repr__(self) -> str:
        return f"ProviderClient({self.base_url!r}, {len(self._keys)} keys)"

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def next_key(self) -> int:
        """The account for the next new task, round-robin. Uploads and the submit of one task
        must use the same account: an `oss://` key resolves only for the account that sent it."""
        return next(self._turns)

    # -- the task API -------------------------------------------------------------------------

    async def submit(self, body: Mapping[str, Any], *, oss: bool, key_index: int | None = None) -> UpstreamTask:
        """Create a provider task (asynchronous mode). `oss=True` when references are `oss://`
        keys from `upload()`. On `ProviderTransient` with `uncertain`, the task may exist."""
        k = self.next_key() if key_index is None else self._checked_index(key_index)
        headers = {"X-DashScope-Async": "enable"}
        if oss:
            headers["X-DashScope-OssResourceResolve"] = "enable"
        answer = await self._call("POST", _CREATE_PATH, k, "submit", acts=True, json=dict(body), headers=headers)
        return self._task(answer, k, "submit", uncertain=True)

    async def get(self, task_id: str, *, key_index: int = 0) -> UpstreamTask:
        """The provider's view of one task, asked with the account that submitted it."""
        k = self._checked_index(key_index)
        answer = await self._call("GET", f"/tasks/{_quoted(task_id)}", k, "query")
        return self._task(answer, k, "query", uncertain=False)

    async def cancel(self, task_id: str, *, key_index: int = 0) -> None:
        """Cancel a PENDING task; the provider refuses any other state (`UnsupportedOperation`)."""
        k = self._checked_index(key_index)
        await self._call("POST", f"/tasks/{_quoted(task_id)}/cancel", k, "cancel", acts=True)

    async def list(self, start: datetime, end: datetime, model: str | None = None, status: str | None = None,
                   page_no: int = 1, page_size: int = 100, *, key_index: int = 0) -> builtins.list[UpstreamSummary]:
        """One page of the account's tasks submitted between `start` and `end`, newest first.
        The window is widened to whole seconds (start down, end up), so it never loses a task;
        naive datetimes are taken as UTC. `status` may name several states, comma-separated."""
        k = self._checked_index(key_index)
        params: dict[str, str | int] = {
            "page_no": page_no, "page_size": page_size,
            "start_time": _list_time(start, self.tz, up=False), "end_time": _list_time(end, self.tz, up=True),
        }
        if model:
            params["model_name"] = model
        if status:
            params["status"] = status
        answer = await self._call("GET", "/tasks", k, "list", params=params)
        return _summaries(answer, k)

    # -- files --------------------------------------------------------------------------------

    async def upload(self, path: Path, model: str, *, key_index: int = 0, name: str | None = None) -> str:
        """Send a local file to the provider's storage as the official SDK does
        (`dashscope/utils/oss_utils.py`): a `getPolicy` certificate, then a multipart POST to
        its `upload_host`. Returns `oss://<upload_dir>/<name>` (`name` defaults to the file's
        own; its suffix tells the provider the type). Each call takes a fresh
        certificate (a fresh folder), so calling again after a failure never collides with
        the forbidden overwrite of a first try that did arrive."""
        k = self._checked_index(key_index)
        answer = await self._call("GET", "/uploads", k, "getPolicy", params={"action": "getPolicy", "model": model})
        policy = _policy(answer)
        name = name or path.name
        key = f"{policy['upload_dir']}/{name}"
        form = {
            "OSSAccessKeyId": policy["oss_access_key_id"],
            "Signature": policy["signature"],
            "policy": policy["policy"],
            "key": key,
            "x-oss-object-acl": policy["x_oss_object_acl"],
            "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"],
            "success_action_status": "200",
            "x-oss-content-type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        }
        with path.open("rb") as handle:  # httpx reads it in 64 KiB pieces as it sends
            files = {"file": (name, handle, form["x-oss-content-type"])}
            request = self._http.build_request("POST", policy["upload_host"], data=form, files=files,
                                               headers={"Accept": "application/json"})
            await self._exchange(request, "upload", acts=False)
        return f"oss://{key}"

    async def download(self, url: str, dest: Path, max_bytes: int, *, max_seconds: float = 600.0) -> int:
        """Stream a result video to `dest` (through a temporary file beside it, so `dest` is
        whole or absent) and return its size. More than `max_bytes` is a `ProviderError`
        (`ResultTooLarge`); the whole transfer is bounded by `max_seconds`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with _mapped("download", acts=False, timeout=max_seconds):
                async with asyncio.timeout(max_seconds):
                    size = await self._stream_to(url, part, max_bytes)
            os.replace(part, dest)
            return size
        finally:
            part.unlink(missing_ok=True)

    # -- plumbing -----------------------------------------------------------------------------

    def _checked_index(self, key_index: int) -> int:
        if not 0 <= key_index < len(self._keys):
            raise ValueError(f"key_index {key_index} is not one of the {len(self._keys)} keys")
        return key_index

    async def _call(self, method: str, path: str, k: int, what: str, *, acts: bool = False,
                    headers: dict[str, str] | None = None, **options: Any) -> dict[str, Any]:
        """One API request with key `k`, after its limiter; the answer's JSON object."""
        if self._limiters is not None:
            await self._limiters[k].acquire()
        headers = {**(headers or {}), "Authorization": f"Bearer {self._keys[k]}"}
        request = self._http.build_request(method, self.base_url + path, headers=headers, **options)
        turns = take_turns()  # this one's, and any the caller acquired for this call
        if turns:
            request.extensions["trace"] = _stamper(turns)
            for turn in turns:
                await turn.leave(traced=self._traced)
        status, raw = await self._exchange(request, what, acts=acts, turns=turns)
        body = _json_object(raw)
        if body is None:
            raise ProviderTransient("BadResponse", f"{what}: HTTP {status} with a body that is not a JSON object: "
                                    f"{_snippet(raw)!r}", status=status, uncertain=acts)
        return body

    async def _exchange(self, request: httpx.Request, what: str, *, acts: bool,
                        turns: Sequence[Turn] = ()) -> tuple[int, bytes]:
        """Send, read a bounded answer, and raise for any status other than 2xx. `turns` learn
        when the answer came back, or that none did (or that nothing was sent)."""
        try:
            with _mapped(what, acts=acts, timeout=self.timeout):
                try:
                    async with asyncio.timeout(self.timeout):
                        response = await self._http.send(request, stream=True)
                        for turn in turns:
                            turn.answered()
                        try:
                            raw = await _read_bounded(response, what, acts)
                        finally:
                            await response.aclose()
                except BaseException as exc:
                    for turn in turns:  # no effect on turns already answered
                        if isinstance(exc, _NEVER_SENT):
                            turn.release()
                        else:
                            turn.unanswered()
                    raise
        except (ProviderError, ProviderTransient) as exc:
            # No status (not connected, timed out): the failure's code stands for it.
            metrics.PROVIDER_ANSWERS.labels(call=what, status=str(exc.status or exc.code)).inc()
            raise
        metrics.PROVIDER_ANSWERS.labels(call=what, status=str(response.status_code)).inc()
        if not response.is_success:
            raise _status_error(response, raw, what, acts)
        return response.status_code, raw

    async def _stream_to(self, url: str, part: Path, max_bytes: int) -> int:
        # The result URL is signed; a CDN may redirect it. No key is ever sent with it.
        async with self._http.stream("GET", url, follow_redirects=True) as response:
            if not response.is_success:
                raise _status_error(response, await _read_bounded(response, "download", False), "download", False)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(int(declared), max_bytes)
            size = 0
            with part.open("wb") as out:  # small writes to the page cache: fine on the loop
                async for chunk in response.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(size, max_bytes)
                    out.write(chunk)
        if size == 0:
            raise ProviderTransient("BadResponse", "download: the result video is empty", status=response.status_code)
        return size

    @staticmethod
    def _task(answer: dict[str, Any], k: int, what: str, *, uncertain: bool) -> UpstreamTask:
        try:
            return UpstreamTask.from_json(answer, k)
        except ValueError as exc:
            raise ProviderTransient("BadResponse", f"{what}: the answer has {exc}: {_snippet(answer)!r}",
                                    uncertain=uncertain) from exc


def _stamper(turns: Sequence[Turn]) -> Any:
    """httpcore's `trace` extension for one request: just before each write of the request
    (headers, body), its turns take their places (the first time) and stamp the departure, so
    time spent waiting for a connection or opening one is not counted."""
    async def trace(event: str, info: Mapping[str, Any]) -> None:
        if ".send_request_" in event:
            for turn in turns:
                await turn.sending()
    return trace


# -- error mapping ------------------------------------------------------------------------------


@contextlib.contextmanager
def _mapped(what: str, *, acts: bool, timeout: float) -> Iterator[None]:
    """httpx's and asyncio's failures as provider errors. `acts`: the request changes something,
    so an answer lost after sending leaves the outcome uncertain."""
    try:
        yield
    except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError) as exc:
        # Never sent: the provider cannot have acted on it.
        raise ProviderTransient("ConnectionError", f"{what}: could not connect: {_describe(exc)}") from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise ProviderTransient("RequestTimeOut", f"{what}: no complete answer in time (limit {timeout:g} s)",
                                uncertain=acts) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise ProviderError("InvalidURL", f"{what}: {_describe(exc)}") from exc
    except httpx.TransportError as exc:  # dropped or broken connection, protocol errors
        raise ProviderTransient("ConnectionError", f"{what}: the connection failed: {_describe(exc)}",
                                uncertain=acts) from exc


def _status_error(response: httpx.Response, raw: bytes, what: str, acts: bool) -> ProviderError | ProviderTransient:
    status = response.status_code
    code, message = _envelope(raw, status)
    message = f"{what}: {message}"
    if status in (408, 429) or status >= 500:
        # A 429 refuses before acting; a 5xx (a gateway's 504 above all) may come after.
        return ProviderTransient(code, message, retry_after(response), status=status,
                                 uncertain=acts and status != 429)
    return ProviderError(code, message, status)


def _envelope(raw: bytes, status: int) -> tuple[str, str]:
    """(code, message) from the provider's JSON envelope, an OSS XML error, or the status."""
    body = _json_object(raw)
    if body is not None and isinstance(body.get("code"), str) and body["code"]:
        return body["code"], str(body.get("message") or "")
    fields = dict(_XML_FIELD.findall(raw[:4096].decode("utf-8", "replace")))
    if "Code" in fields:
        return fields["Code"], fields.get("Message", "")
    fallback = _FALLBACK_CODES.get(status, "InternalError" if status >= 500 else "BadResponse")
    return fallback, f"HTTP {status}: {_snippet(raw)!r}"


async def _read_bounded(response: httpx.Response, what: str, acts: bool) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise ProviderTransient("BadResponse", f"{what}: the answer is over {_MAX_ANSWER_BYTES} bytes",
                                    status=response.status_code, uncertain=acts)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> ProviderError:
    return ProviderError("ResultTooLarge", f"download: the result video is over {max_bytes} bytes ({size} seen)")


# -- answers ------------------------------------------------------------------------------------


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _summaries(answer: dict[str, Any], k: int) -> builtins.list[UpstreamSummary]:
    data = answer.get("data")
    if data is None:
        return []  # the provider leaves `data` out of an empty page
    try:
        if not isinstance(data, builtins.list):
            raise ValueError("data is not a list")
        return [UpstreamSummary.from_json(item, k) for item in data if isinstance(item, dict)]
    except ValueError as exc:
        raise ProviderTransient("BadResponse", f"list: {exc}: {_snippet(answer)!r}") from exc


_POLICY_FIELDS = ("policy", "signature", "upload_dir", "upload_host", "oss_access_key_id",
                  "x_oss_object_acl", "x_oss_forbid_overwrite")


def _policy(answer: dict[str, Any]) -> dict[str, str]:
    """The certificate of a getPolicy answer: under `data`, as the provider answers it (the
    official SDK also takes `output`, so a gateway that answers so is understood too)."""
    cert = answer.get("data")
    if not isinstance(cert, dict):
        cert = answer.get("output")
    missing = [name for name in _POLICY_FIELDS if not isinstance(cert, dict) or cert.get(name) in (None, "")]
    if missing or not isinstance(cert, dict):
        raise ProviderTransient("BadResponse", f"getPolicy: the certificate lacks {', '.join(missing)}")
    host = str(cert["upload_host"])
    if not host.lower().startswith(("http://", "https://")):
        raise ProviderError("BadResponse", f"getPolicy: upload_host is not an http(s) URL: {host[:_SNIPPET]!r}")
    return {name: str(cert[name]) for name in _POLICY_FIELDS}


# -- small helpers ------------------------------------------------------------------------------


def _checked_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"the provider's base URL must start with http:// or https://, not {url!r}")
    return url


def _quoted(task_id: str) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise ValueError(f"a task id must be a non-empty string, not {task_id!r}")
    return quote(task_id.strip(), safe="")


def utc(epoch_ms: int) -> datetime:
    """An epoch-milliseconds moment as an aware datetime, for `ProviderClient.list`."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _list_time(moment: datetime, tz: tzinfo, *, up: bool) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(tz)
    if up and local.microsecond:
        local += timedelta(seconds=1)
    return local.strftime(_TIME_FORMAT)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(raw: bytes | Mapping[str, Any]) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(raw, default=str)
    return text[:_SNIPPET]


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
