"""The admin API (`/admin/v1/...`): owners' accounts, keys, usage and webhook endpoints, for keys with the admin
role only; an ordinary key is refused (403 AccessDenied) before anything is read. Amounts are
credits, as decimal strings ("12.5"); numbers are taken too; at most `MAX_CREDITS` either way.
Owners and ids in the path or query must be text (no NUL, no half surrogate pair), checked
before any query: PostgreSQL cannot even compare with such a value. docs/billing.md."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from ...app import accounts, keys, webhooks
from ...app.keys import RATE_FIELDS, ROLES, KeyInfo, KeyRates
from ...app.limits import KINDS
from ...app.auth import Principal
from ...app.ledger import MAX_CREDITS, to_credits, to_micro
from ...errors import AccessDenied, InvalidParameter, NotFound, UnsupportedOperation, clip
from ..deps import in_thread, is_text, principal_of, read_json, service_of
from ..errors import request_id
from ..openapi import SECURITY, errors, json_body
from ..schemas import AccountCreate, AccountCredit, AccountLimits, KeyCreate, KeyLimits, WebhookCreate

__all__ = ["router"]

router = APIRouter(prefix="/admin/v1", tags=["admin"])

_BODY_LIMIT = 16 << 10
# The statement and the usage answer JSON, or CSV with format=csv.
_JSON_OR_CSV: dict[int | str, dict[str, Any]] = {200: {
    "description": "JSON, or CSV with format=csv",
    "content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}}
_OWNER_MAX = 64


async def _admin(request: Request) -> Principal:
    principal = await principal_of(request)
    if principal.role != "admin":
        raise AccessDenied("this key may not use the admin API; make an admin key with 'ref2video keys create --admin'")
    return principal


async def _object(request: Request) -> dict[str, Any]:
    body = await read_json(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return body


def _ok(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"request_id": request_id(), **body})


def _owner(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _OWNER_MAX or not value.isprintable():
        raise InvalidParameter(f"owner must be a name of 1 to {_OWNER_MAX} printable characters")
    return value


def _text(value: str, name: str) -> str:
    """A path or query value, refused (400 naming it) when it is not text."""
    if not is_text(value):
        raise InvalidParameter(f"{name} holds a NUL character or an unpaired surrogate, which is not text")
    return value


def _amount(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidParameter(f"{name} must be a number of credits, as a string or a number")
    try:
        return to_micro(Decimal(str(value)))
    except (InvalidOperation, ValueError):  # not a number, infinite, NaN or too large
        raise InvalidParameter(f"{name} must be a number of credits from -{MAX_CREDITS} to {MAX_CREDITS}, "
                               f"not {clip(str(value))}") from None


def _credits(micro: int | None) -> str | None:
    return None if micro is None else str(to_credits(micro))


def _account(info: accounts.AccountInfo) -> dict[str, Any]:
    return {"owner": info.owner, "balance": _credits(info.balance), "held": _credits(info.held),
            "daily_limit": _credits(info.daily_limit), "monthly_limit": _credits(info.monthly_limit),
            "spent_today": _credits(info.spent_today), "spent_this_month": _credits(info.spent_this_month),
            "created_at": info.created_at}


def _csv(header: tuple[str, ...], rows: list[tuple[Any, ...]], name: str) -> Response:
    # The file name is a header value: an owner's quotes, line breaks or non-Latin-1 letters
    # would break it (or fail to encode), so only safe characters go in.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.post("/accounts", summary="Open an account", responses=errors(400, 401, 403, 413),
             openapi_extra={**json_body(AccountCreate), "security": SECURITY})
async def create_account(request: Request) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    body = await _object(request)
    owner = _owner(body.get("owner"))
    opening = _amount(body.get("credit", 0), "credit") or 0
    if opening < 0:
        raise InvalidParameter("credit cannot be negative")
    limits = {k: _amount(body.get(k), k, allow_none=True) for k in ("daily_limit", "monthly_limit")}
    try:
        info = await in_thread(lambda: accounts.create(service.db, owner, credit=opening, tz=service.tz, **limits))
    except accounts.AccountExists:
        raise UnsupportedOperation(f"owner {clip(owner)} already has an account") from None
    return _ok({"account": _account(info)})


@router.get("/accounts/{owner}", summary="An account: balance, holds, limits, spend",
            responses=errors(400, 401, 403, 404), openapi_extra={"security": SECURITY})
async def get_account(request: Request, owner: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    owner = _text(owner, "owner")
    try:
        info = await in_thread(lambda: accounts.show(service.db, owner, tz=service.tz))
    except accounts.NoSuchAccount:
        raise NotFound(f"owner {clip(owner)} has no account") from None
    return _ok({"account": _account(info)})


@router.post("/accounts/{owner}/credit", summary="Top up (or adjust down with a negative amount)",
             responses=errors(400, 401, 403, 404, 413),
             openapi_extra={**json_body(AccountCredit), "security": SECURITY})
async def credit_account(request: Request, owner: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    owner = _text(owner, "owner")
    body = await _object(request)
    amount = _amount(body.get("amount"), "amount")
    if not amount:
        raise InvalidParameter("amount must not be zero")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise InvalidParameter("note must be a string of at most 500 characters")
    try:
        balance = await in_thread(lambda: accounts.credit(service.db, owner, amount, note=note))
    except accounts.NoSuchAccount:
        raise NotFound(f"owner {clip(owner)} has no account") from None
    except accounts.BalanceOutOfRange as exc:
        raise InvalidParameter(f"amount: {exc}") from None
    return _ok({"owner": owner, "balance": _credits(balance)})


@router.put("/accounts/{owner}/limits", summary="Set the daily and monthly spend limits (null lifts one)",
            responses=errors(400, 401, 403, 404, 413),
            openapi_extra={**json_body(AccountLimits), "security": SECURITY})
async def set_limits(request: Request, owner: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    owner = _text(owner, "owner")
    body = await _object(request)
    changes = {short: _amount(body[name], name, allow_none=True)
               for short, name in (("daily", "daily_limit"), ("monthly", "monthly_limit")) if name in body}
    try:
        await in_thread(lambda: accounts.set_limits(service.db, owner, **changes))
        info = await in_thread(lambda: accounts.show(service.db, owner, tz=service.tz))
    except accounts.NoSuchAccount:
        raise NotFound(f"owner {clip(owner)} has no account") from None
    return _ok({"account": _account(info)})


@router.get("/accounts/{owner}/statement", summary="The account's ledger, oldest first (format=csv for CSV)",
            responses={**_JSON_OR_CSV, **errors(400, 401, 403)}, openapi_extra={"security": SECURITY})
async def statement(request: Request, owner: str, format: str = "json") -> Response:
    await _admin(request)
    service = service_of(request)
    owner = _text(owner, "owner")
    entries = await in_thread(lambda: accounts.statement(service.db, owner))
    rows = [(e.id, e.created_at, e.kind, _credits(e.amount), e.task_id, e.model, e.note) for e in entries]
    header = ("id", "created_at", "kind", "amount", "task_id", "model", "note")
    if format == "csv":
        return _csv(header, rows, f"statement-{owner}")
    return _ok({"owner": owner, "entries": [dict(zip(header, row)) for row in rows]})


@router.get("/usage", summary="Charged usage by owner, model and day (format=csv for CSV)",
            responses={**_JSON_OR_CSV, **errors(400, 401, 403)}, openapi_extra={"security": SECURITY})
async def usage(request: Request, owner: str | None = None, format: str = "json") -> Response:
    await _admin(request)
    service = service_of(request)
    owner = None if owner is None else _text(owner, "owner")
    found = await in_thread(lambda: accounts.usage(service.db, tz=service.tz, owner=owner))
    header = ("day", "owner", "model", "tasks", "seconds", "cost")
    rows = [(r.day, r.owner, r.model, r.tasks, r.seconds, _credits(r.cost)) for r in found]
    if format == "csv":
        return _csv(header, rows, "usage")
    return _ok({"usage": [dict(zip(header, row)) for row in rows]})


def _rates(body: dict[str, Any]) -> dict[str, float | int | None]:
    """The key's own rate limits that `body` sets, checked (400 naming the first bad one)."""
    try:
        return keys.check_rates(body)
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None


def _key(info: KeyInfo, request: Request) -> dict[str, Any]:
    """A key as the admin API shows it: its own rate limits as set (null: the server's), and
    the limits in effect for it (null: none)."""
    limits = service_of(request).limits
    in_effect = {kind: limits.rate(kind, info.rates) for kind in KINDS}
    return {"id": info.id, "owner": info.owner, "name": info.name, "role": info.role, "created_at": info.created_at,
            "revoked_at": info.revoked_at, **{name: getattr(info.rates, name) for name in RATE_FIELDS},
            "limits": {kind: {"per_second": rate.per_second, "burst": rate.burst} if rate.on else None
                       for kind, rate in in_effect.items()}}


@router.post("/keys", summary="Make a key for an owner (shown once), with its own rate limits if given",
             responses=errors(400, 401, 403, 413), openapi_extra={**json_body(KeyCreate), "security": SECURITY})
async def create_key(request: Request) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    body = await _object(request)
    owner = _owner(body.get("owner"))
    name, role = body.get("name", ""), body.get("role", "user")
    if not isinstance(name, str) or len(name) > 128:
        raise InvalidParameter("name must be a string of at most 128 characters")
    if role not in ROLES:
        raise InvalidParameter(f"role must be one of {', '.join(ROLES)}")
    rates = KeyRates.of(_rates(body))
    key, info = await in_thread(lambda: keys.create_key(service.db, owner=owner, name=name, role=role, rates=rates))
    return _ok({"key": key, **_key(info, request)})


@router.get("/keys", summary="Every key (ids, owners, roles and own rate limits; secrets are never stored)",
            responses=errors(401, 403), openapi_extra={"security": SECURITY})
async def list_keys(request: Request) -> JSONResponse:
    await _admin(request)
    found = await in_thread(keys.list_keys, service_of(request).db)
    return _ok({"keys": [_key(k, request) for k in found]})


@router.put("/keys/{key_id}/limits",
            summary="Set a key's own rate limits (null: back to the server's; a rate of 0: no limit for it)",
            responses=errors(400, 401, 403, 404, 413),
            openapi_extra={**json_body(KeyLimits), "security": SECURITY})
async def set_key_limits(request: Request, key_id: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    key_id = _text(key_id, "key_id")
    body = await _object(request)
    unknown = sorted(set(body) - set(RATE_FIELDS))
    if unknown:
        raise InvalidParameter(f"{clip(unknown[0])} is not a key's rate limit; the fields are {', '.join(RATE_FIELDS)}")
    changes = _rates(body)
    info = await in_thread(lambda: keys.set_rates(service.db, key_id, changes))
    if info is None:
        raise NotFound(f"no live key {clip(key_id)}")
    service.auth.forget(key_id)  # this process applies them at once, every other one within a second
    return _ok(_key(info, request))


@router.delete("/keys/{key_id}", summary="Revoke a key (every server stops taking it within a second)",
               responses=errors(400, 401, 403, 404), openapi_extra={"security": SECURITY})
async def revoke_key(request: Request, key_id: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    key_id = _text(key_id, "key_id")
    if not await in_thread(keys.revoke_key, service.db, key_id):
        raise NotFound(f"no live key {clip(key_id)}")
    service.auth.forget(key_id)
    return _ok({"id": key_id, "revoked": True})


def _endpoint(endpoint: webhooks.Endpoint) -> dict[str, Any]:
    return {"id": endpoint.id, "owner": endpoint.owner, "url": endpoint.url, "events": endpoint.events,
            "created_at": endpoint.created_at}


@router.post("/webhooks", summary="Register a webhook endpoint for an owner (its secret is in the answer)",
             responses=errors(400, 401, 403, 413), openapi_extra={**json_body(WebhookCreate), "security": SECURITY})
async def add_webhook(request: Request) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    body = await _object(request)
    owner = _owner(body.get("owner"))
    events = body.get("events")
    if events is not None and not isinstance(events, list):
        raise InvalidParameter("events must be a list of event names")
    url = webhooks.check_url(body.get("url"))
    endpoint, secret = await in_thread(lambda: webhooks.add(service.db, owner, url, events))
    return _ok({"endpoint": _endpoint(endpoint), "secret": secret})


@router.get("/webhooks", summary="An owner's webhook endpoints, and its callbacks' signing secret",
            responses=errors(400, 401, 403), openapi_extra={"security": SECURITY})
async def list_webhooks(request: Request, owner: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    owner = _owner(owner)
    found = await in_thread(lambda: webhooks.list(service.db, owner))
    callback_secret = await in_thread(lambda: webhooks.secret(service.db, owner))
    return _ok({"endpoints": [_endpoint(e) for e in found], "callback_secret": callback_secret})


@router.delete("/webhooks/{endpoint_id}", summary="Remove an owner's endpoint (undelivered messages are given up)",
               responses=errors(400, 401, 403, 404), openapi_extra={"security": SECURITY})
async def remove_webhook(request: Request, endpoint_id: str, owner: str) -> JSONResponse:
    await _admin(request)
    service = service_of(request)
    owner = _owner(owner)
    endpoint_id = _text(endpoint_id, "endpoint_id")
    if not await in_thread(lambda: webhooks.remove(service.db, owner, endpoint_id)):
        raise NotFound(f"owner {clip(owner)} has no endpoint {clip(endpoint_id)}")
    return _ok({"id": endpoint_id, "removed": True})
