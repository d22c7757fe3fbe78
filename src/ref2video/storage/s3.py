"""Results and uploads in an S3-compatible bucket (boto3, the `s3` extra).

Keys live under a prefix of the bucket (`results/`, `uploads/`), so one bucket holds both and
the orphan sweep of one never sees the other's objects. Every call to the bucket has bounded
connect and read timeouts and a bounded number of tries: a bucket that is down or slow turns
into `StorageUnavailable` within seconds, never a hang. The API answers it with 503, a worker
retries the task later (code `StorageUnavailable`).

A finished video is served either by a presigned URL straight from the bucket (`PresignedLinks`
signs `video_url` that way) or, when the bucket is private to the API, through
`/v1/results/<key>`, which streams it from the bucket with Range support (`response`).
"""

from __future__ import annotations

import dataclasses
import math
import mimetypes
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import NotFound
from .base import StorageUnavailable, StoredObject
from .signing import UrlSigner

__all__ = ["S3Storage", "S3Partial", "PresignedLinks", "make_client", "PARTIAL_GRACE_SECONDS"]

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
# A download's `.<key>.<random>.partial` in the cache older than this was left by a process that
# died mid-way: a live download renews its modified time with every chunk it writes.
PARTIAL_GRACE_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class S3Partial(StoredObject):
    """An unfinished multipart upload, removed by aborting it."""

    upload_id: str = ""


def make_client(*, endpoint_url: str = "", region: str = "us-east-1", access_key_id: str = "",
                secret_access_key: str = "", connect_timeout: float = 5.0, read_timeout: float = 30.0,
                max_attempts: int = 3) -> Any:
    """A boto3 S3 client whose every call is bounded: `connect_timeout` and `read_timeout` per
    try, `max_attempts` tries in all. Empty credentials mean boto3's own chain (environment,
    instance role, ~/.aws)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise RuntimeError("storage = 's3' needs boto3: pip install 'ref2video[s3]'") from exc
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"max_attempts": max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint_url else None,
                    signature_version="s3v4")
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None,
        aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None, config=config,
    )


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3Storage:
    """`S3Storage(client, "bucket", prefix="results/", cache_dir=...)` keeps `key` at
    `s3://bucket/results/key`.

    The prefix must be the storage's own: the orphan sweep removes any object under it, named
    like a key, that no row names. `local_path` downloads an object into `cache_dir` (at most
    `max_download_bytes`; the cache keeps at most `cache_max_bytes`, oldest use first).
    """

    def __init__(self, client: Any, bucket: str, *, prefix: str = "", cache_dir: Path,
                 max_download_bytes: int = 1 << 30, cache_max_bytes: int = 4 << 30,
                 multipart_threshold: int = 64 << 20) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache_dir = Path(cache_dir)
        self.max_download_bytes = max_download_bytes
        self.cache_max_bytes = cache_max_bytes
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold, use_threads=False)

    # -- names ------------------------------------------------------------------------------

    def _object(self, key: str) -> str:
        if not _SAFE_KEY.match(key) or ".." in key:
            raise NotFound(f"no result named {key!r}")
        return self.prefix + key

    def _call(self, method: str, **kwargs: Any) -> Any:
        """One bounded call to the bucket; transport failures and the server's own 5xx become
        `StorageUnavailable`, other client errors pass as they are."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if isinstance(status, int) and status >= 500:
                raise StorageUnavailable(f"the bucket answered {status} to {method}") from exc
            raise
        except BotoCoreError as exc:
            raise StorageUnavailable(f"the bucket is unreachable ({type(exc).__name__})") from exc

    # -- the interface ----------------------------------------------------------------------

    def put(self, key: str, source: Path) -> None:
        """One PUT (atomic) or, for large files, a multipart upload that is visible only once
        completed; a crash mid-way leaves an unfinished upload, which `listing` reports."""
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            self.client.upload_file(str(source), self.bucket, name, Config=self._transfer,
                                    ExtraArgs={"ContentType": kind})
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"storing {key} in the bucket failed ({type(exc).__name__})") from exc
        except Exception as exc:  # s3transfer wraps failures in its own exceptions
            if type(exc).__module__.startswith(("s3transfer", "boto3")):
                raise StorageUnavailable(f"storing {key} in the bucket failed ({type(exc).__name__})") from exc
            raise

    def delete(self, key: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=self._object(key))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self._call("head_object", Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def local_path(self, key: str) -> Path | None:
        """The object downloaded into the cache (reused while its size and ETag match), or
        None when there is no such object. Larger than `max_download_bytes`: refused."""
        head = self._head(key)
        if head is None:
            return None
        size = int(head.get("ContentLength", 0))
        if size > self.max_download_bytes:
            raise StorageUnavailable(f"{key} is {size} bytes, over the {self.max_download_bytes} a worker downloads")
        etag = str(head.get("ETag", "")).strip('"')[:32]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / f"{key}.{re.sub(r'[^0-9A-Za-z]', '', etag) or 'x'}"
        if target.is_file() and target.stat().st_size == size:
            os.utime(target)
            return target
        partial = self.cache_dir / f".{key}.{secrets.token_hex(4)}.partial"
        try:
            body = self._call("get_object", Bucket=self.bucket, Key=self._object(key))["Body"]
            written = 0
            with open(partial, "wb") as out:
                try:
                    while chunk := body.read(_CHUNK):
                        written += len(chunk)
                        if written > self.max_download_bytes:
                            raise StorageUnavailable(f"{key} grew past {self.max_download_bytes} bytes")
                        out.write(chunk)
                except StorageUnavailable:
                    raise
                except Exception as exc:
                    raise StorageUnavailable(f"reading {key} from the bucket failed ({type(exc).__name__})") from exc
                finally:
                    body.close()
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        self._trim_cache(keep=target)
        return target

    def _trim_cache(self, keep: Path) -> None:
        """Remove the least recently used downloads past `cache_max_bytes`, and partial
        downloads older than `PARTIAL_GRACE_SECONDS` (a kill mid-download leaves them)."""
        files = []
        stale = time.time() - PARTIAL_GRACE_SECONDS
        for entry in self.cache_dir.iterdir():
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            if not entry.is_file():
                continue
            if not entry.name.startswith("."):
                files.append((stat.st_mtime, stat.st_size, entry))
            elif entry.name.endswith(".partial") and stat.st_mtime < stale:
                entry.unlink(missing_ok=True)
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files):
            if total <= self.cache_max_bytes:
                break
            if entry != keep:
                entry.unlink(missing_ok=True)
                total -= size

    def response(self, key: str, request: Request) -> Response:
        """The object streamed from the bucket (for a bucket private to the API). Blocking: the
        route calls it in a thread. A single `bytes=a-b` range is honoured; any other Range
        header is ignored and the whole object sent, as the local storage does."""
        from botocore.exceptions import ClientError

        name = self._object(key)
        wanted = request.headers.get("range", "")
        ranged = bool(_RANGE.match(wanted.strip())) and wanted.strip() != "bytes=-"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if ranged:
            kwargs["Range"] = wanted.strip()
        try:
            got = self._call("head_object" if request.method == "HEAD" else "get_object", **kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise NotFound("the result has expired or does not exist") from None
            if code == "InvalidRange":
                head = self._head(key)
                size = int(head.get("ContentLength", 0)) if head else 0
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            raise StorageUnavailable(f"the result cannot be read now ({code or 'error'})") from exc
        headers = {"accept-ranges": "bytes", "content-length": str(got.get("ContentLength", 0)),
                   "content-disposition": f'inline; filename="{key}"'}
        if got.get("ETag"):
            headers["etag"] = str(got["ETag"])
        if got.get("LastModified") is not None:
            headers["last-modified"] = got["LastModified"].strftime("%a, %d %b %Y %H:%M:%S GMT")
        status = 200
        if got.get("ContentRange"):
            headers["content-range"] = str(got["ContentRange"])
            status = 206
        body = got.get("Body")
        return StreamingResponse(_chunks(body) if body is not None else iter(()), status_code=status,
                                 headers=headers, media_type="video/mp4")

    def listing(self) -> Iterator[StoredObject]:
        """Objects under the prefix named like a key, and unfinished multipart uploads."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix):]
                    if _SAFE_KEY.match(name) and ".." not in name:
                        yield StoredObject(name, item["LastModified"].timestamp())
            uploads = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                 Prefix=self.prefix)
            for page in uploads:
                for item in page.get("Uploads", []):
                    yield S3Partial(item["Key"][len(self.prefix):], item["Initiated"].timestamp(), True,
                                    upload_id=item["UploadId"])
        except Exception as exc:
            if type(exc).__module__.startswith("botocore"):
                raise StorageUnavailable(f"listing the bucket failed ({type(exc).__name__})") from exc
            raise

    def discard(self, item: StoredObject) -> None:
        from botocore.exceptions import ClientError

        if isinstance(item, S3Partial):
            try:
                self._call("abort_multipart_upload", Bucket=self.bucket, Key=self.prefix + item.name,
                           UploadId=item.upload_id)
            except ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
        elif item.partial:
            raise NotFound(f"no partial upload named {item.name!r}")
        else:
            self.delete(item.name)

    def presign(self, key: str, ttl_seconds: int) -> str:
        """A GET link straight to the object, valid `ttl_seconds` (S3 allows at most 7 days)."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)},
            ExpiresIn=max(1, min(int(ttl_seconds), 7 * 86400)))
        return url

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def _chunks(body: Any) -> Iterator[bytes]:
    """The object's bytes; Starlette iterates a plain iterator in a thread. A bucket that dies
    mid-stream ends the answer early (the client sees a short body, as with any cut transfer)."""
    try:
        while chunk := body.read(_CHUNK):
            yield chunk
    except Exception:  # noqa: BLE001 - headers are sent: nothing better to do than stop
        return
    finally:
        body.close()


class PresignedLinks(UrlSigner):
    """`video_url` as a presigned link to the bucket, valid at least as long as a signed API
    link (`url_ttl_seconds`). `verify` still accepts the API's own signed links, so a link handed
    out before the switch keeps working until it expires.

    Presigning (SigV4 in botocore) costs a query about twice its own time, and clients poll a
    finished task again and again, so a link is kept and handed out again for up to `reuse`
    seconds: it is signed for `ttl + reuse` seconds, so whoever gets it still has at least `ttl`.
    """

    def __init__(self, secret: str, ttl_seconds: int, storage: S3Storage, *, reuse_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, max_links: int = 10_000) -> None:
        super().__init__(secret, ttl_seconds)
        self.storage = storage
        longest = 7 * 86400 - ttl_seconds  # S3 signs for 7 days at most
        self.reuse = max(0.0, min(60.0, ttl_seconds / 10, longest) if reuse_seconds is None
                         else min(reuse_seconds, longest))
        self._clock = clock
        self._max = max_links
        self._links: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (url, signed at)
        self._lock = threading.Lock()

    def sign(self, base_url: str, key: str, now: float | None = None) -> str:
        del base_url, now
        at = self._clock()
        with self._lock:
            kept = self._links.get(key)
            if kept is not None and at - kept[1] <= self.reuse:
                return kept[0]
        url = self.storage.presign(key, math.ceil(self.ttl_seconds + self.reuse))
        if self.reuse > 0:
            with self._lock:
                self._links[key] = (url, at)
                self._links.move_to_end(key)
                while len(self._links) > self._max:
                    self._links.popitem(last=False)
        return url
