"""The relay: async views that forward OpenAI calls with the one upstream key and meter them.

Per request the hot path does: a cached key lookup, offline token counting, the rate-limit
check (one Redis script when Redis is configured), the one atomic quota step in the
database, and the upstream call. The usage record is written after the answer has gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from keys.models import QuotaLedger, period_end, period_start
from keys.ratelimit import RateLimited, rate_acquire, uses_redis
from keys.selectors import KeyInfo, LimitSnapshot, akey_info_for_secret, ledger_for
from keys.services import KeyInactive, QuotaExceeded, Reservation, quota_reserve
from relay import errors, recording, upstream
from relay.database import in_db_thread
from relay.exchange import Exchange, response_owner
from relay.protocol import (
    ChatStream,
    ResponsesStream,
    SSEBuffer,
    StreamState,
    chat_usage,
    loads,
    response_summary,
    responses_usage,
)
from relay.tokens import count_chat_prompt, count_input, count_text
from usage.models import UsageRecord
from usage.pricing import PriceBook, aprice_book

log = logging.getLogger(__name__)

# Metered POST endpoints and the kind of body each takes.
METERED = {
    "chat/completions": "chat",
    "completions": "completion",
    "embeddings": "embedding",
    "responses": "responses",
    "moderations": "moderation",
}
_MODEL_PATH = re.compile(r"models/([A-Za-z0-9._:\-]+)")
_RESPONSE_PATH = re.compile(r"responses/(resp_[A-Za-z0-9_\-]+)(/input_items)?")
# Largest prompt tokenised on the event loop; bigger ones go to a thread.
_INLINE_TOKENISE_BYTES = 32 * 1024

MICRO_USD = Decimal("0.000001")
# Times a reservation refused only because of other requests' reservations is tried again.
_SETTLE_RETRIES = 3
# Seconds an unknown Responses id is looked for again before a 404 (another process's record).
_OWNER_WRITE_GRACE = 0.3


def _secret(request: HttpRequest, url_key: str | None) -> str:
    if url_key:
        return url_key
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def _authenticate(
    request: HttpRequest, url_key: str | None, now: dt.datetime
) -> KeyInfo | HttpResponse:
    secret = _secret(request, url_key)
    if not secret:
        return errors.invalid_api_key(
            "You didn't provide an API key. Send your proxy key as 'Authorization: Bearer KEY'."
        )
    key = (
        await akey_info_for_secret(secret) if secret.startswith(settings.PROXY_KEY_PREFIX) else None
    )
    if key is None:
        return errors.invalid_api_key(
            "Incorrect API key provided: the proxy key is unknown or revoked."
        )
    if key.expires_at is not None and key.expires_at <= now:
        return errors.invalid_api_key("Incorrect API key provided: this proxy key has expired.")
    return key


def _quota_headers(reservation: Reservation | None, key: KeyInfo) -> dict[str, str]:
    """Remaining budget, requests and tokens of the tighter of key and user, after this
    request's reservation."""
    if reservation is None:
        return {}
    lefts = [
        key.key_limits.remaining(reservation.key_state),
        key.user_limits.remaining(reservation.user_state),
    ]
    budget = [left.usd for left in lefts if left.usd is not None]
    requests = [left.requests for left in lefts if left.requests is not None]
    tokens = [left.tokens for left in lefts if left.tokens is not None]
    headers = {}
    if budget:
        headers["x-proxy-budget-remaining-usd"] = str(min(budget).quantize(MICRO_USD))
    if requests:
        headers["x-proxy-requests-remaining"] = str(min(requests))
    if tokens:
        headers["x-proxy-tokens-remaining"] = str(min(tokens))
    return headers


def _relayed_headers(resp: aiohttp.ClientResponse, extra: dict[str, str]) -> dict[str, str]:
    headers = {
        name: resp.headers[name]
        for name in upstream.RELAYED_RESPONSE_HEADERS
        if name in resp.headers
    }
    headers.update(extra)
    return headers


def _scrub(data: bytes) -> bytes:
    # Upstream error messages can quote the key they were sent; ours never leaves the proxy.
    secret = settings.OPENAI_API_KEY.encode()
    return data.replace(secret, b"sk-***") if secret and secret in data else data


def _int_field(body: dict[str, Any], *names: str) -> int | HttpResponse | None:
    """The first of `names` present, validated as a non-negative integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return errors.openai_error(400, f"'{name}' must be a non-negative integer.", param=name)
        return value
    return None


def _prompt_tokens(kind: str, body: dict[str, Any], model: str) -> int:
    if kind == "chat":
        tokens = count_chat_prompt(body.get("messages"), model)
        if body.get("tools") or body.get("functions"):
            tokens += count_text(
                orjson.dumps(body.get("tools") or body.get("functions")).decode(), model
            )
        return tokens
    if kind == "completion":
        return count_input(body.get("prompt"), model)
    if kind in ("embedding", "moderation"):
        return count_input(body.get("input"), model)
    # responses
    return count_input(body.get("input"), model) + count_text(
        str(body.get("instructions") or ""), model
    )


def _output_allowance(kind: str, body: dict[str, Any], max_out: int | None) -> tuple[int, int]:
    """Output tokens to reserve against budgets (the most the request can produce), and to
    count against TPM (what it asked for explicitly, as OpenAI counts)."""
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if kind == "completion":
        prompts = body.get("prompt")
        many = (
            len(prompts)
            if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)
            else 1
        )
        # The legacy endpoint's documented default is 16 tokens per choice.
        reserve = (max_out if max_out is not None else 16) * choices * many
    elif kind in ("chat", "responses"):
        default = settings.PROXY_DEFAULT_OUTPUT_TOKENS
        reserve = (max_out if max_out is not None else default) * choices
    else:
        reserve = 0
    return reserve, (max_out or 0) * choices


def _refuse(ex: Exchange, response: HttpResponse, error_code: str) -> HttpResponse:
    """Answer with the proxy's own error, and record the request as refused."""
    ex.finish(response.status_code, error_code=error_code)
    return response


async def _owns_response(user_id: int, response_id: str) -> bool:
    owner = response_owner(response_id)
    if owner is not None:
        return owner == user_id
    owned = UsageRecord.objects.filter(user_id=user_id, response_id=response_id)
    if await owned.aexists():
        return True
    # Made a moment ago by another server process whose record is not written yet: give that
    # write a moment before answering 404 (only unknown ids pay this wait).
    await asyncio.sleep(_OWNER_WRITE_GRACE)
    return await owned.aexists()


async def _grant(
    ex: Exchange, *, cost: Decimal, tokens: int, rate_tokens: int
) -> HttpResponse | None:
    """Rate limits, then the atomic reservation. Returns an error response, or None if granted."""
    ticket = await rate_acquire(ex.key, tokens=rate_tokens)
    if isinstance(ticket, RateLimited):
        return _refuse(
            ex,
            errors.rate_limited(ticket.message, kind=ticket.kind, retry_after=ticket.retry_after),
            "rate_limit_exceeded",
        )
    ex.ticket = ticket
    try:
        for attempt in range(_SETTLE_RETRIES + 1):
            try:
                ex.reservation = await in_db_thread(
                    quota_reserve, key=ex.key, cost=cost, tokens=tokens, now=ex.now
                )
                break
            except QuotaExceeded as exc:
                if not exc.in_flight or attempt == _SETTLE_RETRIES:
                    raise
                # It fits beside what is spent, not beside what is still reserved: a client
                # sending one request after another may be ahead of the previous record's
                # write. Wait for this process's pending writes, or briefly for another's.
                if not await recording.settled(ex.key.id, timeout=0.5):
                    await asyncio.sleep(0.02 * 2**attempt)
    except QuotaExceeded as exc:
        return _refuse(ex, errors.insufficient_quota(exc.message), "insufficient_quota")
    except KeyInactive:
        return _refuse(
            ex,
            errors.invalid_api_key("Incorrect API key provided: this proxy key was revoked."),
            "invalid_api_key",
        )
    return None


async def _send(
    ex: Exchange, method: str, path: str, body: bytes | None, request: HttpRequest, query: str = ""
) -> aiohttp.ClientResponse | HttpResponse:
    try:
        return await upstream.open_request(
            method,
            path,
            headers=upstream.upstream_headers(dict(request.headers)),
            body=body,
            query=query,
        )
    except TimeoutError:
        return _refuse(ex, errors.upstream_timeout(), "upstream_timeout")
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__)
        return _refuse(
            ex,
            errors.upstream_unreachable("The proxy could not reach OpenAI."),
            "upstream_unreachable",
        )


def _upstream_auth_failed(ex: Exchange, resp: aiohttp.ClientResponse) -> HttpResponse:
    # A 401 from OpenAI means the operator's key is wrong, not the user's: saying 401 would
    # send users hunting for a problem with their own key.
    log.error("OpenAI rejected the proxy's upstream key (401)")
    ex.finish(
        502,
        error_code="upstream_auth_failed",
        upstream_request_id=resp.headers.get("x-request-id", ""),
    )
    return errors.openai_error(
        502,
        "OpenAI rejected the proxy's upstream key; the operator must fix OPENAI_API_KEY.",
        type="upstream_error",
        code="upstream_auth_failed",
    )


async def _read_all(ex: Exchange, resp: aiohttp.ClientResponse) -> bytes | HttpResponse:
    try:
        data = await resp.read()
    except TimeoutError:
        resp.close()
        return _refuse(ex, errors.upstream_timeout(), "upstream_timeout")
    except (aiohttp.ClientError, OSError):
        resp.close()
        return _refuse(
            ex,
            errors.upstream_unreachable("The connection to OpenAI broke."),
            "upstream_unreachable",
        )
    finally:
        resp.release()
    ex.first_byte()
    return data


@csrf_exempt
async def relay(request: HttpRequest, path: str, url_key: str | None = None) -> HttpResponse:
    now = timezone.now()  # once: for the expiry check, the record and the quota period
    key = await _authenticate(request, url_key, now)
    if isinstance(key, HttpResponse):
        return key
    ex = Exchange(key, path[:64], now=now)
    try:
        return await _dispatch(request, ex, path)
    except Exception:
        log.exception("relay error on /v1/%s", path[:64])
        ex.finish(500, error_code="proxy_error")
        return errors.openai_error(
            500, "The proxy failed on this request.", type="server_error", code="proxy_error"
        )


async def _dispatch(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    method = request.method
    if path in METERED:
        if method != "POST":
            return _refuse(
                ex,
                errors.openai_error(405, f"Use POST for /v1/{path}.", code="method_not_allowed"),
                "method_not_allowed",
            )
        return await _metered(request, ex, METERED[path])
    if path == "models" and method == "GET":
        return await _models(request, ex)
    match = _MODEL_PATH.fullmatch(path)
    if match and method == "GET":
        return await _model(request, ex, match.group(1))
    match = _RESPONSE_PATH.fullmatch(path)
    if match and (method == "GET" or (method == "DELETE" and not match.group(2))):
        return await _stored_response(request, ex, path, match.group(1))
    return _refuse(ex, errors.not_found(path), "unknown_url")


async def _parse_metered(
    request: HttpRequest, ex: Exchange, kind: str
) -> tuple[bytes, dict[str, Any], int | None] | HttpResponse:
    """Check a metered request's body as OpenAI would: (raw body, parsed body, the output
    maximum it names), or the error response (already recorded)."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raw = None
    if raw is None or len(raw) > settings.PROXY_MAX_BODY_BYTES:
        return _refuse(
            ex,
            errors.openai_error(
                413, f"Request body is larger than {settings.PROXY_MAX_BODY_BYTES} bytes."
            ),
            "body_too_large",
        )
    body = loads(raw)
    if not isinstance(body, dict):
        return _refuse(
            ex,
            errors.openai_error(
                400,
                "We could not parse the JSON body of your request. The body must be a JSON object.",
            ),
            "invalid_json",
        )
    model = body.get("model")
    if kind == "moderation" and model is None:
        # `model` is optional on moderations (the SDK leaves it out); OpenAI then uses this.
        model = "omni-moderation-latest"
    if not isinstance(model, str) or not model:
        return _refuse(
            ex,
            errors.openai_error(400, "You must provide a model parameter.", param="model"),
            "missing_model",
        )
    ex.model = model
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        return _refuse(
            ex,
            errors.openai_error(400, "'stream' must be a boolean.", param="stream"),
            "invalid_type",
        )
    ex.stream = bool(stream) and kind in ("chat", "completion", "responses")
    ex.requested_tier = str(body.get("service_tier") or "")
    ex.keep_request_body(body)
    if kind == "responses" and body.get("background") is True:
        return _refuse(
            ex,
            errors.openai_error(
                400,
                "background responses are not supported by this proxy: their cost is only known when fetched later. Send the request without 'background'.",
                param="background",
                code="unsupported_parameter",
            ),
            "unsupported_parameter",
        )
    previous = body.get("previous_response_id")
    if kind == "responses" and previous is not None:
        if not isinstance(previous, str) or not await _owns_response(ex.key.user_id, previous):
            return _refuse(
                ex,
                errors.openai_error(
                    404,
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                ),
                "not_found",
            )
    if kind == "chat":
        max_out = _int_field(body, "max_completion_tokens", "max_tokens")
    elif kind == "completion":
        max_out = _int_field(body, "max_tokens")
    elif kind == "responses":
        max_out = _int_field(body, "max_output_tokens")
    else:
        max_out = 0
    if isinstance(max_out, HttpResponse):
        return _refuse(ex, max_out, "invalid_type")
    return raw, body, max_out


async def _metered(request: HttpRequest, ex: Exchange, kind: str) -> HttpResponse:
    parsed = await _parse_metered(request, ex, kind)
    if isinstance(parsed, HttpResponse):
        return parsed
    raw, body, max_out = parsed
    model = ex.model
    if not ex.key.model_allowed(model):
        return _refuse(
            ex,
            errors.openai_error(
                403,
                f"This key may not use the model '{model}'.",
                param="model",
                code="model_not_allowed",
            ),
            "model_not_allowed",
        )
    book = await aprice_book()
    price = book.price(model, ex.now)
    if (price is None or not price.is_priced) and ex.key.has_budget and kind != "moderation":
        return _refuse(
            ex,
            errors.openai_error(
                400,
                f"The model '{model}' has no price in this proxy's price table, and this key has a budget. Ask the operator to add a price.",
                param="model",
                code="model_not_priced",
            ),
            "model_not_priced",
        )
    if len(raw) > _INLINE_TOKENISE_BYTES:
        prompt = await sync_to_async(_prompt_tokens, thread_sensitive=False)(kind, body, model)
    else:
        prompt = _prompt_tokens(kind, body, model)
    ex.prompt_estimate = prompt
    reserve_out, rate_out = _output_allowance(kind, body, max_out)
    cost = price.worst_case(prompt, reserve_out) if price is not None else Decimal(0)
    refused = await _grant(
        ex, cost=cost, tokens=prompt + reserve_out, rate_tokens=prompt + rate_out
    )
    if refused is not None:
        return refused
    return await _forward_metered(request, ex, kind, raw, body, book)


async def _forward_metered(
    request: HttpRequest,
    ex: Exchange,
    kind: str,
    raw: bytes,
    body: dict[str, Any],
    book: PriceBook,
) -> HttpResponse:
    """Send a granted request upstream and relay the answer: streamed event by event, or
    whole; either way it is recorded once, with its cost."""
    upstream_body = raw
    client_wants_usage = True
    if ex.stream and kind in ("chat", "completion"):
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        client_wants_usage = options.get("include_usage") is True
        if not client_wants_usage:
            upstream_body = orjson.dumps(
                {**body, "stream_options": {**options, "include_usage": True}}
            )
    resp = await _send(ex, "POST", _path_of(kind), upstream_body, request)
    if isinstance(resp, HttpResponse):
        return resp
    headers = _relayed_headers(resp, _quota_headers(ex.reservation, ex.key))
    request_id = resp.headers.get("x-request-id", "")
    if resp.status == 401:
        resp.release()
        return _upstream_auth_failed(ex, resp)
    if (
        ex.stream
        and resp.status == 200
        and resp.headers.get("content-type", "").startswith("text/event-stream")
    ):
        state: StreamState = (
            ResponsesStream()
            if kind == "responses"
            else ChatStream(client_wants_usage=client_wants_usage)
        )
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        response = StreamingHttpResponse(
            _relay_stream(ex, resp, state, book, request_id), status=200, headers=headers
        )
        # If the client leaves before the first chunk is pulled, the generator never runs and
        # its `finally` with it: record and close from the response's finalizer instead.
        weakref.finalize(response, _abandoned, asyncio.get_running_loop(), ex, resp)
        return response
    data = await _read_all(ex, resp)
    if isinstance(data, HttpResponse):
        return data
    usage = None
    response_model = ""
    tier = ""
    response_id = ""
    if resp.status == 200:
        payload = loads(data)
        if isinstance(payload, dict):
            response_model = str(payload.get("model") or "")
            tier = str(payload.get("service_tier") or "")
            if kind == "responses":
                usage = responses_usage(payload.get("usage"))
                response_id = str(payload.get("id") or "")
            else:
                usage = chat_usage(payload.get("usage"))
    else:
        data = _scrub(data)
    ex.finish(
        resp.status,
        book=book,
        usage=usage,
        response_model=response_model,
        service_tier=tier,
        upstream_request_id=request_id,
        response_id=response_id,
        error_code="" if resp.status < 400 else _upstream_error_code(data),
        response_body=data.decode("utf-8", "replace") if ex.log_bodies else "",
    )
    return HttpResponse(data, status=resp.status, headers=headers)


def _abandoned(loop: asyncio.AbstractEventLoop, ex: Exchange, resp: aiohttp.ClientResponse) -> None:
    if ex.finished or loop.is_closed():
        return

    def finish() -> None:
        resp.close()
        ex.finish(499, error_code="client_disconnected", client_disconnected=True)

    loop.call_soon_threadsafe(finish)


def _path_of(kind: str) -> str:
    return next(path for path, k in METERED.items() if k == kind)


def _upstream_error_code(data: bytes) -> str:
    payload = loads(data)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "upstream_error")
    return "upstream_error"


def _stream_error_event(state: StreamState, message: str) -> bytes:
    error = {
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
        }
    }
    if isinstance(state, ResponsesStream):
        return b"event: error\ndata: " + orjson.dumps({"type": "error", **error}) + b"\n\n"
    return b"data: " + orjson.dumps(error) + b"\n\n"


async def _relay_stream(
    ex: Exchange, resp: aiohttp.ClientResponse, state: StreamState, book: PriceBook, request_id: str
) -> AsyncIterator[bytes]:
    """Pass each SSE event on as it arrives; whatever ends the stream, record it once."""
    buffer = SSEBuffer()
    outcome = "client_gone"  # what a CancelledError / GeneratorExit below means
    try:
        try:
            async for chunk in resp.content.iter_any():
                ex.first_byte()
                for event in buffer.feed(chunk):
                    out = state.on_event(event)
                    if state.response_id:
                        # Before the client sees the terminal event and can continue from it.
                        ex.claim_response(state.response_id)
                    if out is not None:
                        yield out
            rest = buffer.rest()
            if rest.strip():
                out = state.on_event(rest + b"\n\n")
                if out is not None:
                    yield out
            outcome = "done" if state.finished else "ended_early"
        except (aiohttp.ClientError, OSError, TimeoutError):
            outcome = "cut"
    finally:
        if outcome == "done":
            resp.release()
        else:
            # Closing (not releasing) drops the upstream connection at once, so OpenAI stops
            # generating tokens nobody will read.
            resp.close()
        text = state.text()
        ex.finish(
            200 if outcome != "client_gone" else 499,
            book=book,
            usage=state.usage,
            estimated_text=None if state.usage is not None else text,
            response_model=state.response_model,
            service_tier=state.service_tier,
            upstream_request_id=request_id,
            response_id=state.response_id,
            error_code={"done": "", "client_gone": "client_disconnected"}.get(
                outcome, "stream_interrupted"
            ),
            client_disconnected=outcome == "client_gone",
            response_body=response_summary(state.response_model or ex.model, text, state.usage)
            if ex.log_bodies
            else "",
        )
    if outcome in ("cut", "ended_early"):
        # A clean end for the client: an error event its SDK raises, instead of a hang.
        yield _stream_error_event(
            state, "The upstream stream from OpenAI ended before it was complete."
        )


def _allowed_models_only(ex: Exchange, data: bytes) -> bytes:
    """The model list, less the models this key may not use."""
    payload = loads(data)
    if not (isinstance(payload, dict) and isinstance(payload.get("data"), list)):
        return data
    if not (ex.key.key_limits.models or ex.key.user_limits.models):
        return data
    payload["data"] = [
        m for m in payload["data"] if isinstance(m, dict) and ex.key.model_allowed(str(m.get("id")))
    ]
    return orjson.dumps(payload)


async def _models(request: HttpRequest, ex: Exchange) -> HttpResponse:
    return await _passthrough(request, ex, "models", rewrite=_allowed_models_only)


async def _model(request: HttpRequest, ex: Exchange, model: str) -> HttpResponse:
    ex.model = model
    if not ex.key.model_allowed(model):
        return _refuse(
            ex,
            errors.openai_error(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
            ),
            "model_not_found",
        )
    return await _passthrough(request, ex, f"models/{model}")


async def _stored_response(
    request: HttpRequest, ex: Exchange, path: str, response_id: str
) -> HttpResponse:
    # All users share one upstream account; only the user who made a response may see it.
    if not await _owns_response(ex.key.user_id, response_id):
        return _refuse(
            ex,
            errors.openai_error(
                404, f"Response with id '{response_id}' not found.", code="not_found"
            ),
            "not_found",
        )
    return await _passthrough(request, ex, path, query=request.META.get("QUERY_STRING", ""))


async def _passthrough(
    request: HttpRequest,
    ex: Exchange,
    path: str,
    query: str = "",
    rewrite: Callable[[Exchange, bytes], bytes] | None = None,
) -> HttpResponse:
    """An unmetered call (models, stored responses): granted like any other, so a revoked key
    or a rate limit stops it, then relayed as is (or through `rewrite` when it succeeded)."""
    refused = await _grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    resp = await _send(ex, request.method or "GET", path, None, request, query=query)
    if isinstance(resp, HttpResponse):
        return resp
    if resp.status == 401:
        resp.release()
        return _upstream_auth_failed(ex, resp)
    data = await _read_all(ex, resp)
    if isinstance(data, HttpResponse):
        return data
    if resp.status == 200 and rewrite is not None:
        data = rewrite(ex, data)
    ex.finish(
        resp.status,
        upstream_request_id=resp.headers.get("x-request-id", ""),
        error_code="" if resp.status < 400 else _upstream_error_code(data),
    )
    return HttpResponse(_scrub(data), status=resp.status, headers=_relayed_headers(resp, {}))


# -- the proxy's own endpoints -----------------------------------------------------------------


def _ledger_view(
    limits: LimitSnapshot, state: QuotaLedger | None, period: str, start: dt.datetime
) -> dict[str, Any]:
    end = period_end(period, start)
    left = limits.remaining(state)
    return {
        "period": period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat() if end else None,
        "spent_usd": str((state.spent_usd if state else Decimal(0)).quantize(MICRO_USD)),
        "reserved_usd": str((state.reserved_usd if state else Decimal(0)).quantize(MICRO_USD)),
        "tokens": state.tokens if state else 0,
        "requests": state.requests if state else 0,
        "remaining_usd": None if left.usd is None else str(left.usd.quantize(MICRO_USD)),
        "remaining_tokens": left.tokens,
        "remaining_requests": left.requests,
    }


def _me(key: KeyInfo, now: dt.datetime) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": "proxy.key",
        "key": {
            "id": key.id,
            "prefix": key.prefix,
            "name": key.name,
            "username": key.username,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        },
        "limits": {"key": key.key_limits.as_dict(), "user": key.user_limits.as_dict()},
        "usage": {},
    }
    for scope, limits, owner in (
        ("key", key.key_limits, {"api_key_id": key.id}),
        ("user", key.user_limits, {"user_id": key.user_id}),
    ):
        ledger = ledger_for(period=limits.period, now=now, **owner)
        result["usage"][scope] = _ledger_view(
            limits, ledger, limits.period, period_start(limits.period, now)
        )
    return result


@csrf_exempt
async def proxy_me(request: HttpRequest, url_key: str | None = None) -> HttpResponse:
    """GET /v1/proxy/me: this key's limits, what it and its user spent this period, what is left."""
    now = timezone.now()
    key = await _authenticate(request, url_key, now)
    if isinstance(key, HttpResponse):
        return key
    if request.method != "GET":
        return errors.openai_error(405, "Use GET for /v1/proxy/me.", code="method_not_allowed")
    return JsonResponse(await sync_to_async(_me, thread_sensitive=False)(key, now))


async def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


async def readyz(request: HttpRequest) -> HttpResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(sync_to_async(_database_ok, thread_sensitive=False)(), timeout=5)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 (any failure means not ready)
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        if uses_redis():
            from keys.ratelimit import _redis_client

            await asyncio.wait_for(_redis_client().ping(), timeout=5)
        checks["cache"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["cache"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
