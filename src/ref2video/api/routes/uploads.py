"""Uploads: the SDK's `getPolicy` certificate and multipart upload, and a plain upload route.

Files become `oss://<key>` references that resolve only for the uploading key's owner.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from ...errors import AccessDenied, InvalidParameter, ModelNotFound, UnsupportedOperation, clip
from ...protocol import MAX_UPLOAD_BYTES
from ...service import Service
from ...app import uploads as store
from ...app.auth import Principal
from ...app.keys import is_live
from ..deps import base_url_of, in_thread, principal_of, service_of
from ..errors import request_id
from ..multipart import FormStream
from ..openapi import SECURITY, errors, form_body
from ..schemas import CertificateAnswer, UploadAnswer

__all__ = ["router"]

router = APIRouter()

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._ ()+-]{1,200}$")
# A media type as a client may write it (`image/png; charset=x`): printable ASCII. Anything
# else (a NUL, which PostgreSQL cannot store, other controls, non-ASCII) is not a type.
_CONTENT_TYPE = re.compile(r"^[\x20-\x7e]{1,128}$")
_CERTIFICATE_FIELDS = {
    "OSSAccessKeyId": "oss_access_key_id of the certificate", "Signature": "its signature",
    "policy": "its policy", "key": "upload_dir/<file name>", "x-oss-object-acl": "private",
    "x-oss-forbid-overwrite": "true", "success_action_status": "200", "x-oss-content-type": "the file's type",
}


@router.get("/api/v1/uploads", tags=["uploads"], summary="Upload certificate (action=getPolicy)",
            response_model=CertificateAnswer, responses=errors(400, 401, 404),
            openapi_extra={"security": SECURITY})
async def get_policy(
    request: Request,
    action: Annotated[str, Query(description="getPolicy")] = "",
    model: Annotated[str, Query(description="the model the file is for")] = "",
) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    if action != "getPolicy":
        raise InvalidParameter(f"action must be 'getPolicy', not {clip(action)}")
    if model not in service.models:
        raise ModelNotFound(f"Model not exist: {clip(model)} is not served here")
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
    return JSONResponse({"request_id": request_id(), "data": certificate})


@router.post("/api/v1/uploads/oss", tags=["uploads"], summary="Multipart upload with a certificate (the SDK's flow)",
             response_class=Response, responses={200: {"description": "stored"}, **errors(400, 403, 413)},
             openapi_extra=form_body(_CERTIFICATE_FIELDS, required=["policy", "Signature", "key"]))
async def upload_with_policy(request: Request) -> Response:
    """No API key comes with this post, so the certificate in the fields before the file is
    checked before a byte of the file is read (OSS's rule: the file part comes last)."""
    service = service_of(request)
    async with FormStream(request) as form:
        form.refuse_declared_over(MAX_UPLOAD_BYTES)
        fields, file = await form.fields()
        if file is not None and "policy" not in fields:
            raise AccessDenied("the certificate fields (policy, Signature) must come before the file")
        grant = service.policy.verify(fields.get("policy", ""), fields.get("Signature", ""))
        if grant is None:
            raise AccessDenied("the upload certificate is invalid or has expired; ask for a new one")
        # The certificate is only as good as the key it was issued to: a revocation ends it now.
        if not await in_thread(is_live, service.db, grant.key_id):
            raise AccessDenied("the key this upload certificate was issued to has been revoked")
        key = fields.get("key", "")
        if posixpath.dirname(key) != grant.upload_dir or not _SAFE_NAME.match(posixpath.basename(key)):
            raise AccessDenied("the key must be <upload_dir>/<file name> of this certificate")
        if file is None:
            raise InvalidParameter("the form has no file field named 'file'")
        principal = Principal(key_id=grant.key_id, owner=grant.owner)
        await _receive(service, principal, key, form, grant.max_bytes, fields.get("x-oss-content-type", ""))
    return Response(status_code=200)


@router.post("/api/v1/uploads", tags=["uploads"], summary="Upload a reference file (multipart field 'file')",
             response_model=UploadAnswer, responses=errors(400, 401, 413),
             openapi_extra={**form_body({}, required=[]), "security": SECURITY})
async def upload(request: Request) -> JSONResponse:
    service = service_of(request)
    principal = await principal_of(request)
    async with FormStream(request) as form:
        form.refuse_declared_over(MAX_UPLOAD_BYTES)
        _, file = await form.fields()
        if file is None:
            raise InvalidParameter("the form has no file field named 'file'")
        name = PurePosixPath(file.filename or "file").name
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "file"
        key = f"ref2video-uploads/{principal.key_id}/{uuid.uuid4().hex}/{name}"
        size = await _receive(service, principal, key, form, MAX_UPLOAD_BYTES, file.content_type)
    return JSONResponse({
        "request_id": request_id(),
        "output": {"url": f"oss://{key}", "key": key, "size": size},
    })


async def _receive(service: Service, principal: Principal, key: str, form: FormStream, limit: int,
                   content_type: str) -> int:
    """Stream the file part to a scratch file and store it under `key`; its size. The scratch
    file is gone afterwards however this ends (too large, cut off, a lost race for the key)."""
    content_type = content_type.strip()
    if not _CONTENT_TYPE.match(content_type):  # checked here: nothing is stored yet
        content_type = "application/octet-stream"
    if await in_thread(store.key_taken, service.db, key):
        raise UnsupportedOperation(f"the file {clip(key, 200)} already exists and uploads never overwrite")
    # A name of its own per upload: two racing for one key never write into each other's file.
    blob = uuid.uuid4().hex + Path(key).suffix.lower()[:8]
    service.settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    # Created and removed here rather than in a thread: removal must happen even when the
    # request is cancelled, and both are single quick system calls.
    with tempfile.NamedTemporaryFile(dir=service.settings.scratch_dir, suffix=".upload") as tmp:
        size = await form.save_file(tmp, limit)
        if size == 0:
            raise InvalidParameter("the uploaded file is empty")
        await in_thread(tmp.flush)
        return await in_thread(_store_blocking, service, principal, key, blob, Path(tmp.name), size, content_type)


def _store_blocking(service: Service, principal: Principal, key: str, blob: str, source: Path, size: int,
                    content_type: str) -> int:
    service.uploads.put(blob, source)
    if not store.record_upload(service.db, principal, key=key, blob=blob, size=size,
                               content_type=content_type):
        service.uploads.delete(blob)  # lost the race for the key: the first one stays
        raise UnsupportedOperation(f"the file {clip(key, 200)} already exists and uploads never overwrite")
    return size
