"""Uploads: the SDK's `getPolicy` certificate and multipart upload, and a plain upload route.

Files become `oss://<key>` references that resolve only for the uploading key's owner.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from ...errors import AccessDenied, InvalidParameter, ModelNotFound, RequestTooLarge, UnsupportedOperation
from ...protocol import MAX_UPLOAD_BYTES
from ...service import Service
from ...store import uploads as store
from ...store.keys import Principal
from ..deps import base_url_of, in_thread, principal_of, service_of

__all__ = ["router"]

router = APIRouter()

_FORM_OVERHEAD = 64 * 1024  # the multipart fields around the file
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._ ()+-]{1,200}$")


@router.get("/api/v1/uploads", tags=["uploads"], summary="Upload certificate (action=getPolicy)")
async def get_policy(request: Request, action: str = "", model: str = "") -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    if action != "getPolicy":
        raise InvalidParameter(f"action must be 'getPolicy', not {action!r}")
    if model not in service.models:
        raise ModelNotFound(f"Model not exist: {model!r} is not served here")
    assert service.policy is not None
    policy, signature, grant = service.policy.issue(principal.owner, principal.key_id, model, MAX_UPLOAD_BYTES)
    certificate = {
        "policy": policy,
        "signature": signature,
        "upload_dir": grant.upload_dir,
        "upload_host": f"{base_url_of(request)}/api/v1/uploads/oss",
        "expire_in_seconds": service.policy.ttl_seconds,
        "max_file_size_mb": MAX_UPLOAD_BYTES // (1 << 20),
        "capacity_limit_mb": MAX_UPLOAD_BYTES // (1 << 20),
        "oss_access_key_id": principal.key_id,
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    # The provider answers the certificate under `data` (clients read data["upload_host"]);
    # the official SDK reads `data` too when there is no `output`.
    return JSONResponse({"request_id": str(uuid.uuid4()), "data": certificate})


@router.post("/api/v1/uploads/oss", tags=["uploads"], summary="Multipart upload with a certificate (the SDK's flow)")
async def upload_with_policy(request: Request) -> Response:
    service = service_of(request)
    assert service.policy is not None
    form = await _read_form(request)
    grant = service.policy.verify(str(form.get("policy", "")), str(form.get("Signature", "")))
    if grant is None:
        raise AccessDenied("the upload certificate is invalid or has expired; ask for a new one")
    key = str(form.get("key", ""))
    if posixpath.dirname(key) != grant.upload_dir or not _SAFE_NAME.match(posixpath.basename(key)):
        raise AccessDenied("the key must be <upload_dir>/<file name> of this certificate")
    principal = Principal(key_id=grant.key_id, owner=grant.owner)
    await _store(service, principal, key, _file_of(form), str(form.get("x-oss-content-type", "")))
    return Response(status_code=200)


@router.post("/api/v1/uploads", tags=["uploads"], summary="Upload a reference file (multipart field 'file')")
async def upload(request: Request) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    form = await _read_form(request)
    file = _file_of(form)
    name = PurePosixPath(file.filename or "file").name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "file"
    key = f"ref2video-uploads/{principal.key_id}/{uuid.uuid4().hex}/{name}"
    size = await _store(service, principal, key, file, file.content_type or "")
    return JSONResponse({
        "request_id": str(uuid.uuid4()),
        "output": {"url": f"oss://{key}", "key": key, "size": size},
    })


async def _read_form(request: Request) -> Any:
    """The multipart form, refusing bodies over the upload limit as they stream in."""
    limit = MAX_UPLOAD_BYTES + _FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the upload is {declared} bytes; the limit is {MAX_UPLOAD_BYTES}")
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise RequestTooLarge(f"the upload is over the limit of {MAX_UPLOAD_BYTES} bytes")
        return message

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=20)
    except RequestTooLarge:
        raise
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        raise InvalidParameter(f"the upload is not a valid multipart form: {exc}") from None


def _file_of(form: Any) -> UploadFile:
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise InvalidParameter("the form has no file field named 'file'")
    return file


async def _store(service: Service, principal: Principal, key: str, file: UploadFile, content_type: str) -> int:
    blob = hashlib.sha256(key.encode()).hexdigest()[:40] + Path(key).suffix.lower()[:8]
    return await in_thread(_store_blocking, service, principal, key, blob, file, content_type)


def _store_blocking(service: Service, principal: Principal, key: str, blob: str, file: UploadFile,
                    content_type: str) -> int:
    service.settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=service.settings.scratch_dir, suffix=".upload") as tmp:
        file.file.seek(0)
        shutil.copyfileobj(file.file, tmp)
        tmp.flush()
        size = tmp.tell()
        if size == 0:
            raise InvalidParameter("the uploaded file is empty")
        service.uploads.put(blob, Path(tmp.name))
    if not store.record_upload(service.db, principal, key=key, blob=blob, size=size,
                               content_type=content_type[:128] or "application/octet-stream"):
        service.uploads.delete(blob)  # lost the race for the key: keep the first
        raise UnsupportedOperation(f"the file {key!r} already exists and uploads never overwrite")
    return size
