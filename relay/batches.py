"""Batches: created, listed, retrieved and cancelled through the proxy, each settled once.

A batch runs upstream for up to a day, long after the request that made it: its cost can only
be known when it ends. So its creation reserves the most it can cost, read from its input file
(a file its creator uploaded through the proxy), line by line as each line alone would be
sized (`relay.metering.size_request`), at the model's batch rates; a line the proxy cannot
bound is refused by its number and nothing is sent. The reservation's pending record is then
handed to the batch (`usage.services.HELD_BY_BATCH`): the reaper leaves it alone, whichever
relay processes live or die, and it is settled when the batch ends — completed, failed, expired
or cancelled — from the usage OpenAI reports on the batch (or, when the batch says none, the
usage of each line in its output file), at the batch rates, attributed to the key and user
that created it, in the budget period it was created in.

Who settles it: a retrieve, list or cancel through the proxy that sees the batch finished, and
every relay process's poller, which asks OpenAI about each unfinished batch every
PROXY_BATCH_POLL_SECONDS (a row is claimed by one process at a time, `checked_at`). However
many see it finish, it is settled once: the writer completes a pending row only once
(`usage.services._records_write` locks the row and checks its state).

A batch and the files it produces (its output and error files) belong to its creator: anyone
else gets OpenAI's 404, and lists show a user only their own batches.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import logging
import re
from decimal import Decimal
from typing import Any

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from keys.selectors import KeyInfo
from relay import errors, recording, upstream
from relay import views as base
from relay.admission import grant, refuse
from relay.database import UNAVAILABLE, in_db_thread, in_writer_thread
from relay.exchange import Exchange
from relay.metering import (
    METERED,
    Refused,
    bad_integer,
    bad_type,
    output_maximum,
    size_request,
    too_deep,
)
from relay.objects import bad_limit, created_time, no_such_file, owns_file, page
from relay.protocol import chat_usage, loads, responses_usage
from usage.models import RecordState, StoredObject, UsageRecord
from usage.pricing import PriceBook, TokenUsage
from usage.services import HELD_BY_BATCH

log = logging.getLogger(__name__)

BATCH_PATH = re.compile(r"batches/(batch_[A-Za-z0-9_\-]{1,100})(/cancel)?")
KINDS = {f"/v1/{path}": kind for path, kind in METERED.items()}
WINDOWS = ("24h",)
FINISHED = ("completed", "failed", "expired", "cancelled")
MAX_LINES = 50_000  # OpenAI's most requests in one batch
_PAGE_DEFAULT, _PAGE_MAX = 20, 100
_AT_ONCE = 8  # batches asked about upstream at once (a list page, a poll)
_POLL_CLAIM = 50  # batches one poll claims
_LATENCY_MAX = 2**31 - 1  # the record's column, in ms (24 days)


# The database lane for what a batch says: a request's (in_db_thread), or, for the poller,
# the background lane, which never counts as the request path answering (relay.database).
_lane: contextvars.ContextVar = contextvars.ContextVar("batch_lane", default=in_db_thread)


def _db(fn, *args: object):  # noqa: ANN001, ANN202 (any database function)
    return _lane.get()(fn, *args)


@dataclasses.dataclass(frozen=True, slots=True)
class Owned:
    """A batch and who made it, as the proxy keeps it."""

    batch_id: str
    user_id: int
    api_key_id: int | None
    record_id: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Sized:
    model: str
    cost: Decimal | None  # None: a built-in tool of its lines has no fee in the table
    tokens: int
    prompt: int
    lines: int


def _no_such_batch(ex: Exchange, batch_id: str) -> HttpResponse:
    return refuse(
        ex, errors.openai_error(404, f"No batch found with id '{batch_id}'."), "not_found"
    )


def _wrong_method(ex: Exchange, path: str, wanted: str) -> HttpResponse:
    return refuse(
        ex,
        errors.openai_error(405, f"Use {wanted} for /v1/{path}.", code="method_not_allowed"),
        "method_not_allowed",
    )


def _invalid(ex: Exchange, message: str, param: str | None, code: str) -> HttpResponse:
    return refuse(ex, errors.openai_error(400, message, param=param, code=code), code)


async def batches(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    method = request.method
    if path == "batches":
        if method == "POST":
            return await _create(request, ex)
        if method == "GET":
            return await _list(request, ex)
        return _wrong_method(ex, path, "GET or POST")
    match = BATCH_PATH.fullmatch(path)
    if match is None:
        return refuse(ex, errors.not_found(path), "unknown_url")
    wanted = "POST" if match.group(2) else "GET"
    if method != wanted:
        return _wrong_method(ex, path, wanted)
    batch_id = match.group(1)
    try:
        owner = await in_db_thread(_owner, ex.key.user_id, batch_id)
    except UNAVAILABLE:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    if owner is None:
        return _no_such_batch(ex, batch_id)
    return await _relay_one(request, ex, path, owner)


# -- creating a batch ---------------------------------------------------------------------------


async def _create(request: HttpRequest, ex: Exchange) -> HttpResponse:
    body = loads(request.body)
    if not isinstance(body, dict):
        return _invalid(
            ex,
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            None,
            "invalid_json",
        )
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            return _invalid(
                ex, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
    file_id, endpoint = body["input_file_id"], body["endpoint"]
    if endpoint not in KINDS:
        listed = ", ".join(f"'{e}'" for e in KINDS)
        return _invalid(
            ex,
            f"Invalid value: '{endpoint[:80]}'. Supported values are: {listed}.",
            "endpoint",
            "invalid_value",
        )
    if body["completion_window"] not in WINDOWS:
        return _invalid(
            ex,
            f"Invalid value: '{body['completion_window'][:40]}'. Supported values are: '24h'.",
            "completion_window",
            "invalid_value",
        )
    ex.keep_request_body(body)
    try:
        owned = await in_db_thread(owns_file, ex.key.user_id, file_id)
    except UNAVAILABLE:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    if not owned:
        return no_such_file(ex, file_id)
    book = await base._prices()
    if book is None:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    content = await _input_file(ex, file_id)
    if isinstance(content, HttpResponse):
        return content
    try:
        sized = await sync_to_async(_size_input, thread_sensitive=False)(
            content, endpoint, book, ex.key, ex.now
        )
    except Refused as no:
        return base._refused(ex, no)
    ex.set_model(sized.model)
    if not ex.key.model_allowed(sized.model):
        return base._not_allowed(ex, sized.model)
    price = book.price(sized.model, ex.now)
    priced = price is not None and price.is_priced
    if not priced and ex.key.has_budget and KINDS[endpoint] != "moderation":
        return base._unpriced(ex, book, sized.model, price)
    if priced and sized.cost is None and ex.key.has_budget:
        return _invalid(
            ex,
            f"A built-in tool in this batch's requests has no price in this proxy's price table "
            f"for '{sized.model}', and this key has a budget. Ask the operator to add its fee.",
            "input_file_id",
            "tool_not_priced",
        )
    ex.book = book
    ex.requested_tier = "batch"
    ex.prompt_estimate = sized.prompt
    refused = await grant(
        ex,
        cost=(sized.cost or Decimal(0)) if priced else Decimal(0),
        tokens=sized.tokens,
        rate_tokens=0,  # OpenAI keeps batches out of the per-minute limits
        price=price,
    )
    if refused is not None:
        return refused
    answer = await base._send_and_read(ex, "POST", "batches", request.body, request)
    if isinstance(answer, HttpResponse):
        return answer
    resp, data = answer
    made = loads(data) if resp.status == 200 else None
    if not (isinstance(made, dict) and isinstance(made.get("id"), str)):
        ex.finish(
            resp.status,
            upstream_request_id=resp.headers.get("x-request-id", ""),
            error_code="" if resp.status < 400 else base._upstream_error_code(data),
        )
        return HttpResponse(
            base._scrub(data), status=resp.status, headers=base._relayed_headers(resp, {})
        )
    try:
        # Before the id is handed out: its owner's next call must find it, and from now on
        # the reservation is the batch's, not this process's.
        await in_db_thread(_adopt, ex, made)
    except UNAVAILABLE:
        # Not kept: stop it upstream (whatever it ran is billed as a cancelled batch would
        # be, to nobody the proxy knows) and say so.
        log.error("batch %s could not be recorded; cancelling it upstream", made["id"][:64])
        asyncio.get_running_loop().create_task(_cancel_upstream(ex.key.user_id, made["id"]))
        ex.finish(503, error_code="database_unavailable")
        return errors.database_unavailable()
    ex.hand_over()
    return HttpResponse(data, status=200, headers=base._relayed_headers(resp, {}))


async def _input_file(ex: Exchange, file_id: str) -> bytes | HttpResponse:
    """The batch's input file, as OpenAI holds it (what the batch will run)."""
    limit = settings.PROXY_BATCH_INPUT_MAX_BYTES
    resp = await _ask(ex.key.user_id, "GET", f"files/{file_id}/content")
    if isinstance(resp, Exception):
        return refuse(
            ex,
            errors.upstream_unreachable("The proxy could not read the batch's input file."),
            "upstream_unreachable",
        )
    try:
        if resp.status != 200:
            data = await resp.read()
            ex.finish(resp.status, error_code=base._upstream_error_code(data))
            return HttpResponse(base._scrub(data), status=resp.status)
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > limit:
                return _invalid(
                    ex,
                    f"The batch's input file is larger than this proxy reads ({limit} bytes).",
                    "input_file_id",
                    "file_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return refuse(
            ex,
            errors.upstream_unreachable("The connection to OpenAI broke reading the input file."),
            "upstream_unreachable",
        )
    finally:
        resp.release()


def _at_line(number: int, no: Refused) -> Refused:
    return Refused(
        f"Line {number} of the batch's input file: {no.message}",
        param="input_file_id",
        code=no.code,
    )


def _size_input(
    content: bytes, endpoint: str, book: PriceBook, key: KeyInfo, now: dt.datetime
) -> Sized:
    """The most the batch can cost: each line sized as that request alone would be, at the
    batch rates. Raises Refused, naming the line, for a line that cannot be bounded."""
    kind = KINDS[endpoint]
    model: str | None = None
    price = None
    cost: Decimal | None = Decimal(0)
    tokens = prompt = lines = 0
    for number, raw in enumerate(content.split(b"\n"), 1):
        if not raw.strip():
            continue
        lines += 1
        if lines > MAX_LINES:
            raise Refused(
                f"The batch's input file has more than {MAX_LINES} requests, the most a batch "
                "may have.",
                param="input_file_id",
                code="too_many_tasks",
            )
        line = loads(raw)
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            raise _at_line(
                number,
                Refused(
                    "it is not a JSON object with a 'body' object.",
                    param=None,
                    code="invalid_batch_line",
                ),
            )
        if line.get("url") != endpoint:
            raise _at_line(
                number,
                Refused(
                    f"its url ('{str(line.get('url'))[:80]}') is not the batch's endpoint "
                    f"('{endpoint}').",
                    param=None,
                    code="url_mismatch",
                ),
            )
        body = line["body"]
        if too_deep(body):
            raise _at_line(
                number, Refused("its body nests too deep.", param=None, code="nesting_too_deep")
            )
        line_model = body.get("model", "omni-moderation-latest" if kind == "moderation" else None)
        if not isinstance(line_model, str) or not line_model:
            raise _at_line(number, Refused("it names no model.", param=None, code="missing_model"))
        if model is None:
            model, price = line_model, book.price(line_model, now)
        elif line_model != model:
            raise _at_line(
                number,
                Refused(
                    f"its model ('{line_model[:80]}') differs from the lines before it "
                    f"('{model}'): a batch may only include requests to a single model.",
                    param=None,
                    code="model_mismatch",
                ),
            )
        if body.get("stream") is True or any(
            body.get(name) is not None
            for name in ("previous_response_id", "conversation", "background")
        ):
            raise _at_line(
                number,
                Refused(
                    "a batch line may not stream, run in the background or continue a stored "
                    "response or conversation through this proxy.",
                    param=None,
                    code="unsupported_parameter",
                ),
            )
        wrong = bad_type(kind, body)
        if wrong is not None:
            raise _at_line(number, wrong)
        max_out, bad = output_maximum(kind, body)
        if bad is not None:
            raise _at_line(number, bad_integer(body, bad))
        try:
            sizing = size_request(
                kind,
                body,
                model,
                max_out=max_out,
                strict=key.strict_budget,
                max_input=price.max_input_tokens if price is not None else None,
            )
        except Refused as no:
            raise _at_line(number, no) from None
        tokens += sizing.ceiling.tokens
        prompt += sizing.prompt_estimate
        if price is not None and price.is_priced and cost is not None:
            worst = book.worst_case(price, sizing.ceiling, model=model, at=now, tier="batch")
            cost = None if worst is None else cost + worst
    if model is None:
        raise Refused("The batch's input file is empty.", param="input_file_id", code="empty_file")
    return Sized(model=model, cost=cost, tokens=tokens, prompt=prompt, lines=lines)


def _adopt(ex: Exchange, made: dict[str, Any]) -> None:
    """The batch is its creator's, and its reservation the batch's (one transaction)."""
    assert ex.pending is not None and ex.pending.pk is not None
    with transaction.atomic():
        StoredObject.objects.create(
            kind="batch",
            object_id=str(made["id"])[:128],
            user_id=ex.key.user_id,
            api_key_id=ex.key.id,
            created_at=ex.now,
            purpose=str(made.get("endpoint") or "")[:32],
            data=made,
            record_id=ex.pending.pk,
        )
        UsageRecord.objects.filter(pk=ex.pending.pk, state=RecordState.PENDING).update(
            process=HELD_BY_BATCH
        )


# -- reading batches ----------------------------------------------------------------------------


def _owner(user_id: int, batch_id: str) -> Owned | None:
    row = (
        StoredObject.objects.filter(kind="batch", object_id=batch_id, user_id=user_id)
        .values_list("api_key_id", "record_id")
        .first()
    )
    return None if row is None else Owned(batch_id, user_id, row[0], row[1])


async def _relay_one(request: HttpRequest, ex: Exchange, path: str, owner: Owned) -> HttpResponse:
    """A retrieve or a cancel of the caller's own batch, and what its answer says."""
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    answer = await base._send_and_read(ex, request.method or "GET", path, None, request)
    if isinstance(answer, HttpResponse):
        return answer
    resp, data = answer
    seen = loads(data) if resp.status == 200 else None
    if isinstance(seen, dict):
        await _observe(owner, seen)
    ex.finish(
        resp.status,
        upstream_request_id=resp.headers.get("x-request-id", ""),
        error_code="" if resp.status < 400 else base._upstream_error_code(data),
    )
    return HttpResponse(
        base._scrub(data), status=resp.status, headers=base._relayed_headers(resp, {})
    )


async def _list(request: HttpRequest, ex: Exchange) -> HttpResponse:
    """The caller's own batches, newest first, each as OpenAI says it is now."""
    query = {k: request.GET.get(k) for k in request.GET}
    if bad_limit(query.get("limit"), _PAGE_MAX):
        return _invalid(
            ex,
            f"Invalid 'limit': it must be an integer from 1 to {_PAGE_MAX}.",
            "limit",
            "invalid_value",
        )
    query["limit"] = query.get("limit") or str(_PAGE_DEFAULT)
    query["order"] = "desc"
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    try:
        listed = await in_db_thread(page, "batch", ex.key.user_id, query)
    except UNAVAILABLE:
        ex.finish(503, error_code="database_unavailable")
        return errors.database_unavailable()
    listed["data"] = await _refreshed(ex.key, listed["data"])
    ex.finish(200)
    return JsonResponse(listed)


def _owners(user_id: int, batch_ids: list[str]) -> dict[str, Owned]:
    rows = StoredObject.objects.filter(
        kind="batch", object_id__in=batch_ids, user_id=user_id
    ).values_list("object_id", "api_key_id", "record_id")
    return {
        batch_id: Owned(batch_id, user_id, key_id, record_id)
        for batch_id, key_id, record_id in rows
    }


async def _refreshed(key: KeyInfo, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each batch as OpenAI answers it now (as last seen when OpenAI does not answer)."""
    try:
        owners = await in_db_thread(_owners, key.user_id, [str(b.get("id")) for b in stored])
    except UNAVAILABLE:
        return stored
    limit = asyncio.Semaphore(_AT_ONCE)

    async def one(batch: dict[str, Any]) -> dict[str, Any]:
        owner = owners.get(str(batch.get("id")))
        if owner is None:
            return batch
        async with limit:
            seen = await _fetch(owner)
            return seen if seen is not None else batch

    return list(await asyncio.gather(*(one(batch) for batch in stored)))


# -- what a batch says: its files, and its settlement --------------------------------------------


async def _ask(user_id: int, method: str, path: str) -> aiohttp.ClientResponse | Exception:
    try:
        return await upstream.open_request(
            method, path, headers=upstream.upstream_headers({}, user_id), body=None
        )
    except (upstream.PoolBusy, TimeoutError, aiohttp.ClientError, OSError) as exc:
        return exc


async def _ask_json(user_id: int, method: str, path: str) -> dict[str, Any] | None:
    resp = await _ask(user_id, method, path)
    if isinstance(resp, Exception):
        return None
    try:
        data = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    finally:
        resp.release()
    found = loads(data) if resp.status == 200 else None
    return found if isinstance(found, dict) else None


async def _fetch(owner: Owned) -> dict[str, Any] | None:
    """The batch as OpenAI answers it now, with what that says seen to (None: no answer)."""
    seen = await _ask_json(owner.user_id, "GET", f"batches/{owner.batch_id}")
    if seen is not None:
        await _observe(owner, seen)
    return seen


async def _cancel_upstream(user_id: int, batch_id: str) -> None:
    await _ask_json(user_id, "POST", f"batches/{batch_id}/cancel")


async def _observe(owner: Owned, batch: dict[str, Any]) -> None:
    """Its output and error files become its creator's (before their ids are handed out);
    a finished batch is settled."""
    files = [
        batch[name]
        for name in ("output_file_id", "error_file_id")
        if isinstance(batch.get(name), str) and batch[name]
    ]
    try:
        if files:
            await _adopt_files(owner, files)
        await _db(_remember, owner, batch)
    except UNAVAILABLE:
        return  # the next look at it tries again
    if batch.get("status") in FINISHED and owner.record_id is not None:
        await _settle(owner, batch)


def _remember(owner: Owned, batch: dict[str, Any]) -> None:
    StoredObject.objects.filter(kind="batch", object_id=owner.batch_id).update(data=batch)


async def _adopt_files(owner: Owned, file_ids: list[str]) -> None:
    known = await _db(
        lambda: set(
            StoredObject.objects.filter(object_id__in=file_ids).values_list("object_id", flat=True)
        )
    )
    for file_id in file_ids:
        if file_id in known:
            continue
        info = await _ask_json(owner.user_id, "GET", f"files/{file_id}") or {
            "id": file_id,
            "object": "file",
            "purpose": "batch_output",
            "filename": f"{owner.batch_id}_output.jsonl",
            "bytes": None,
            "created_at": int(timezone.now().timestamp()),
            "status": "processed",
        }
        await _db(_adopt_file, owner, info)


def _adopt_file(owner: Owned, info: dict[str, Any]) -> None:
    when = created_time(info)
    try:
        with transaction.atomic():
            StoredObject.objects.create(
                kind="file",
                object_id=str(info["id"])[:128],
                user_id=owner.user_id,
                api_key_id=owner.api_key_id,
                created_at=when,
                purpose=str(info.get("purpose") or "batch_output")[:32],
                data=info,
            )
    except IntegrityError:  # another look at the batch adopted it first
        pass


_settling: set[int] = set()  # record ids queued for settlement by this process


async def _settle(owner: Owned, batch: dict[str, Any]) -> None:
    record_id = owner.record_id
    if record_id is None or record_id in _settling:
        return
    _settling.add(record_id)
    queued = False
    try:
        usage = _batch_usage(batch)
        if usage is None:
            usage = await _output_usage(owner, batch)
        book = await base._prices()
        if usage is None or book is None:
            return  # its output or the prices cannot be read now: the next look settles it
        record = await _db(_final_record, record_id, batch, usage, book)
        if record is not None:
            recording.record_later(record)
            queued = True
    except UNAVAILABLE:
        pass  # the poller tries again
    finally:
        if queued:
            # The writer completes the row soon; until then this process does not queue it
            # again (and a second record for the row would be skipped by the writer anyway).
            asyncio.get_running_loop().call_later(60, _settling.discard, record_id)
        else:
            _settling.discard(record_id)


def _batch_usage(batch: dict[str, Any]) -> TokenUsage | None:
    usage = batch.get("usage")
    if not isinstance(usage, dict):
        return None
    return responses_usage(usage) or TokenUsage()


async def _output_usage(owner: Owned, batch: dict[str, Any]) -> TokenUsage | None:
    """The sum of the usage of each line OpenAI answered (a batch that reports none)."""
    output = batch.get("output_file_id")
    if not output:
        return TokenUsage()  # nothing answered: nothing billed
    resp = await _ask(owner.user_id, "GET", f"files/{output}/content")
    if isinstance(resp, Exception):
        return None
    try:
        if resp.status != 200:
            return None
        total = TokenUsage()
        async for raw in resp.content:
            line = loads(raw)
            body = (
                ((line or {}).get("response") or {}).get("body") if isinstance(line, dict) else None
            )
            usage = body.get("usage") if isinstance(body, dict) else None
            found = chat_usage(usage) or responses_usage(usage)
            if found is not None:
                total = TokenUsage(
                    prompt=total.prompt + found.prompt,
                    cached=total.cached + found.cached,
                    completion=total.completion + found.completion,
                    reasoning=total.reasoning + found.reasoning,
                )
        return total
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    finally:
        resp.release()


def _final_record(
    record_id: int, batch: dict[str, Any], usage: TokenUsage, book: PriceBook
) -> UsageRecord | None:
    """The batch's record as it ends, over its pending row (None: already settled)."""
    record = UsageRecord.objects.filter(pk=record_id, state=RecordState.PENDING).first()
    if record is None:
        return None
    status = str(batch.get("status"))
    model = str(batch.get("model") or record.model)
    cost, price = book.bill(model, usage, tier="batch", at=record.created_at)
    ended = next(
        (
            batch[name]
            for name in ("completed_at", "failed_at", "expired_at", "cancelled_at")
            if isinstance(batch.get(name), int)
        ),
        None,
    )
    latency = None
    if ended is not None:
        latency = min(max(int((ended - record.created_at.timestamp()) * 1000), 0), _LATENCY_MAX)
    for name, value in {
        "response_model": recording.storable(model)[:120],
        "service_tier": "batch",
        "status_code": 200,
        "error_code": "" if status == "completed" else f"batch_{status}"[:64],
        "prompt_tokens": usage.prompt,
        "cached_tokens": usage.cached,
        "cache_write_tokens": 0,
        "completion_tokens": usage.completion,
        "reasoning_tokens": usage.reasoning,
        "audio_input_tokens": 0,
        "audio_output_tokens": 0,
        "audio_cached_tokens": 0,
        "image_input_tokens": 0,
        "image_output_tokens": 0,
        "characters": 0,
        "audio_seconds": 0,
        "cost_usd": cost,
        "price_id": price.id if price is not None else None,
        "tool_calls": None,
        "estimated": False,
        "latency_ms": latency,
        "upstream_request_id": recording.storable(str(batch.get("id")))[:128],
    }.items():
        setattr(record, name, value)
    return record


# -- the poller ---------------------------------------------------------------------------------


def _claim_due(now: dt.datetime, every: dt.timedelta, limit: int) -> list[Owned]:
    """Unfinished batches no process asked about within `every`, claimed for this one."""
    held = UsageRecord.objects.filter(state=RecordState.PENDING, process=HELD_BY_BATCH)
    rows = list(
        StoredObject.objects.filter(kind="batch", record_id__in=held.values("pk"))
        .filter(Q(checked_at__isnull=True) | Q(checked_at__lt=now - every))
        .order_by(F("checked_at").asc(nulls_first=True), "pk")
        .values_list("pk", "object_id", "user_id", "api_key_id", "record_id", "checked_at")[:limit]
    )
    claimed = []
    for pk, batch_id, user_id, api_key_id, record_id, checked in rows:
        # Conditional: of two processes claiming the same row, one wins.
        if StoredObject.objects.filter(pk=pk, checked_at=checked).update(checked_at=now):
            claimed.append(Owned(batch_id, user_id, api_key_id, record_id))
    return claimed


async def poll_once() -> int:
    """Ask OpenAI about the unfinished batches due a look; returns how many were asked."""
    every = dt.timedelta(seconds=settings.PROXY_BATCH_POLL_SECONDS)
    _lane.set(in_writer_thread)  # this task's, and the tasks it starts
    due = await in_writer_thread(_claim_due, timezone.now(), every, _POLL_CLAIM)
    limit = asyncio.Semaphore(_AT_ONCE)

    async def one(owner: Owned) -> None:
        async with limit:
            await _fetch(owner)

    await asyncio.gather(*(one(owner) for owner in due))
    return len(due)


async def poll_forever() -> None:
    while True:
        await asyncio.sleep(settings.PROXY_BATCH_POLL_SECONDS)
        try:
            await poll_once()
        except Exception as exc:  # noqa: BLE001 (the database or OpenAI is away: next time)
            log.warning("batch poll failed (%s); trying again", type(exc).__name__)
