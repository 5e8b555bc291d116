"""Files: stored on the one upstream account every user shares, kept to the user who made them
(and the output files of a batch to the batch's creator, relay.batches).

The proxy writes who uploaded each file before it hands out the file's id, answers only that
user for it (anyone else gets OpenAI's 404, as for an id that does not exist), and lists a
user's files from its own table, so no user sees another's. Files cost nothing to keep (their
uses are billed where they are used); each call is still granted (revocation, rate limits)
and recorded like any other.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from relay import errors
from relay import views as base
from relay.admission import grant, refuse
from relay.database import UNAVAILABLE, in_db_thread
from relay.exchange import Exchange
from relay.multipart import BadForm, parse
from relay.protocol import loads
from relay.streaming import BodyRelay, RelayStreamingResponse
from usage.models import StoredObject

FILE_PATH = re.compile(r"files/(file-[A-Za-z0-9_\-]{1,100})(/content)?")
_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_LIST_MAX = 10_000


def no_such_file(ex: Exchange, file_id: str) -> HttpResponse:
    return refuse(
        ex,
        errors.openai_error(404, f"No such File object: {file_id}", param="id"),
        "not_found",
    )


def owns_file(user_id: int, file_id: str) -> bool:
    return StoredObject.objects.filter(
        kind="file", object_id=file_id, user_id=user_id, deleted_at__isnull=True
    ).exists()


def created_time(data: dict[str, Any]) -> dt.datetime:
    """When OpenAI says an object was made (its `created_at`), else now."""
    created = data.get("created_at")
    if isinstance(created, int) and 0 < created < 2**33:
        return dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return timezone.now()


def _remember(ex: Exchange, data: dict[str, Any], purpose: str) -> None:
    when = created_time(data)
    try:
        StoredObject.objects.create(
            kind="file",
            object_id=str(data["id"])[:128],
            user_id=ex.key.user_id,
            api_key_id=ex.key.id,
            created_at=when,
            purpose=purpose[:32],
            data=data,
        )
    except IntegrityError:  # the same id twice: upstream never does; the first owner keeps it
        pass


def _forget(user_id: int, file_id: str) -> None:
    StoredObject.objects.filter(kind="file", object_id=file_id, user_id=user_id).update(
        deleted_at=timezone.now()
    )


def page(kind: str, user_id: int, query: dict[str, str]) -> dict[str, Any]:
    """A page of the user's own objects of `kind`, as an OpenAI list (`after`, `limit`,
    `order`, `purpose`)."""
    rows = StoredObject.objects.filter(kind=kind, user_id=user_id, deleted_at__isnull=True)
    if query.get("purpose"):
        rows = rows.filter(purpose=query["purpose"])
    newest_first = query.get("order", "desc") != "asc"
    order = ("-created_at", "-id") if newest_first else ("created_at", "id")
    after = query.get("after")
    if after:
        mark = rows.filter(object_id=after).values_list("created_at", "id").first()
        if mark is None:
            rows = rows.none()
        elif newest_first:
            rows = rows.filter(created_at__lte=mark[0]).exclude(created_at=mark[0], id__gte=mark[1])
        else:
            rows = rows.filter(created_at__gte=mark[0]).exclude(created_at=mark[0], id__lte=mark[1])
    limit = int(query.get("limit") or _LIST_MAX)
    found = list(rows.order_by(*order).values_list("data", flat=True)[: limit + 1])
    data = found[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(found) > limit,
    }


def bad_limit(value: str | None, most: int = _LIST_MAX) -> bool:
    return value is not None and not (value.isdigit() and 1 <= int(value) <= most)


async def files(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    method = request.method
    if path == "files" and method == "POST":
        return await _upload(request, ex)
    if path == "files" and method == "GET":
        return await _list(request, ex)
    match = FILE_PATH.fullmatch(path)
    if match is None or method not in ("GET", "DELETE") or (match.group(2) and method != "GET"):
        return refuse(ex, errors.not_found(path), "unknown_url")
    file_id = match.group(1)
    try:
        owned = await in_db_thread(owns_file, ex.key.user_id, file_id)
    except UNAVAILABLE:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    if not owned:
        return no_such_file(ex, file_id)
    if match.group(2):
        return await _content(request, ex, path)
    response = await base._passthrough(request, ex, path)
    if method == "DELETE" and response.status_code == 200:
        try:
            await in_db_thread(_forget, ex.key.user_id, file_id)
        except UNAVAILABLE:
            pass  # deleted upstream: any later call for it gets OpenAI's own 404
    return response


async def _content(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    """A file's bytes (up to 512 MB), passed on as they arrive rather than held whole."""
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    resp = await base._send(ex, "GET", path, None, request)
    if isinstance(resp, HttpResponse):
        return resp
    if resp.status == 401:
        resp.release()
        return base._upstream_auth_failed(ex, resp)
    request_id = resp.headers.get("x-request-id", "")
    if resp.status != 200:
        data = await base._read_all(ex, resp)
        if isinstance(data, HttpResponse):
            return data
        ex.finish(
            resp.status, upstream_request_id=request_id, error_code=base._upstream_error_code(data)
        )
        return HttpResponse(
            base._scrub(data), status=resp.status, headers=base._relayed_headers(resp, {})
        )
    relay = BodyRelay(ex, resp, request_id)
    if ex.client_gone:
        relay.abandon()
        return base._gone()
    headers = base._relayed_headers(resp, {})
    for name in ("content-length", "content-disposition"):
        if name in resp.headers:
            headers[name] = resp.headers[name]
    return RelayStreamingResponse(relay, headers=headers)


async def _list(request: HttpRequest, ex: Exchange) -> HttpResponse:
    query = request.GET
    if bad_limit(query.get("limit")):
        return refuse(
            ex,
            errors.openai_error(
                400, f"Invalid 'limit': it must be an integer from 1 to {_LIST_MAX}.", param="limit"
            ),
            "invalid_value",
        )
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    try:
        listed = await in_db_thread(page, "file", ex.key.user_id, {k: query.get(k) for k in query})
    except UNAVAILABLE:
        ex.finish(503, error_code="database_unavailable")
        return errors.database_unavailable()
    ex.finish(200)
    return JsonResponse(listed)


async def _upload(request: HttpRequest, ex: Exchange) -> HttpResponse:
    raw = request.body
    try:
        form = parse(raw, request.headers.get("Content-Type", ""))
    except BadForm as exc:
        return refuse(
            ex,
            errors.openai_error(
                400,
                f"Uploading a file takes a multipart/form-data body: {exc}.",
                code="invalid_multipart",
            ),
            "invalid_multipart",
        )
    purpose = form.get("purpose") or ""
    if purpose not in _PURPOSES:
        return refuse(
            ex,
            errors.openai_error(
                400,
                f"'{purpose[:40]}' is not one of {list(_PURPOSES)} - 'purpose'",
                param="purpose",
            ),
            "invalid_value",
        )
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    answer = await base._send_and_read(ex, "POST", "files", raw, request)
    if isinstance(answer, HttpResponse):
        return answer
    resp, data = answer
    payload = loads(data) if resp.status == 200 else None
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        try:
            # Before the id is handed out: its owner's next call must find it.
            await in_db_thread(_remember, ex, payload, purpose)
        except UNAVAILABLE:
            # Not kept: the file stays upstream, reachable by no one through the proxy.
            ex.finish(503, error_code="database_unavailable")
            return errors.database_unavailable()
    ex.finish(
        resp.status,
        upstream_request_id=resp.headers.get("x-request-id", ""),
        error_code="" if resp.status < 400 else base._upstream_error_code(data),
    )
    return HttpResponse(
        base._scrub(data) if resp.status >= 400 else data,
        status=resp.status,
        headers=base._relayed_headers(resp, {}),
    )
