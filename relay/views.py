"""The relay: async views that forward OpenAI calls with the one upstream key and meter them.

Per request the hot path does: a cached key lookup, offline token counting, the rate-limit
check (one Redis script when Redis is configured), the one atomic quota step in the
database (which also writes the request's pending record), and the upstream call. The usage
record is completed after the answer has gone.

A request's work runs as its own task, shielded from the client: when the client leaves, a
reservation being made is still learnt and ended, a plain answer is still read and billed
from its real usage, and only a stream still waiting for upstream's headers is cancelled
(and billed at its prompt's estimate).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from keys.money import MICRO_USD, usd
from keys.selectors import KeyInfo, key_usage_report
from keys.services import Reservation
from relay import errors, identifiers, lifecycle, upstream
from relay.admission import grant, refuse
from relay.auth import authenticate
from relay.database import UNAVAILABLE, in_db_thread
from relay.exchange import Exchange, response_owner
from relay.media_metering import ROUTES as MEDIA_ROUTES
from relay.metering import (
    MAX_NESTING,
    METERED,
    PATH_OF,
    Refused,
    bad_integer,
    bad_type,
    output_maximum,
    size_request,
    too_deep,
)
from relay.protocol import (
    ChatStream,
    ResponsesStream,
    StreamState,
    chat_usage,
    loads,
    responses_usage,
)
from relay.streaming import RelayStreamingResponse, StreamRelay
from usage.models import UsageRecord
from usage.pricing import Price, PriceBook, price_book, price_book_cached

log = logging.getLogger(__name__)

# A model id may hold dots (gpt-3.5-turbo) but is never a dot segment: `models/..` would be
# normalised by the HTTP client into `GET /v1/` upstream, sent with the operator's key.
_MODEL_PATH = re.compile(r"models/(?!\.\.?$)([A-Za-z0-9._:\-]+)")
_RESPONSE_PATH = re.compile(r"responses/(resp_[A-Za-z0-9_\-]+)(/input_items)?")
# Largest prompt tokenised on the event loop; bigger ones go to a thread.
_INLINE_TOKENISE_BYTES = 32 * 1024
# OpenAI routes of stored objects (and sessions) the proxy cannot yet keep to their owner and
# meter: refused by name, never passed through unmetered with the operator's key.
_NOT_RELAYED = re.compile(
    r"(uploads|vector_stores|conversations|fine_tuning|assistants|threads"
    r"|containers|evals|realtime|videos|chatkit)(?:/|$)"
)
# Seconds an unknown Responses id is looked for again before a 404 (another process's record).
_OWNER_WRITE_GRACE = 0.3


def _quota_headers(reservation: Reservation | None, key: KeyInfo) -> dict[str, str]:
    """Remaining budget, requests and tokens of the tightest of key, user and team, after this
    request's reservation."""
    if reservation is None:
        return {}
    lefts = [limits.remaining(state) for limits, state in reservation.states(key)]
    budget = [left.usd for left in lefts if left.usd is not None]
    requests = [left.requests for left in lefts if left.requests is not None]
    tokens = [left.tokens for left in lefts if left.tokens is not None]
    headers = {}
    if budget:
        # Rounded down: the header never says more is left than is.
        left = min(budget).quantize(MICRO_USD, rounding=ROUND_FLOOR)
        headers["x-proxy-budget-remaining-usd"] = usd(left)
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


_NOT_OWNED = (False, None)


def _owned(user_id: int, response_id: str) -> tuple[bool, int | None]:
    """(whether the user made it, the tokens a continuation is billed as its history)."""
    row = (
        UsageRecord.objects.filter(user_id=user_id, response_id=response_id)
        .values_list("prompt_tokens", "completion_tokens", "state")
        .first()
    )
    if row is None:
        return _NOT_OWNED
    return True, (row[0] + row[1]) if row[2] != "pending" else None


async def _response_history(user_id: int, response_id: str) -> tuple[bool, int | None]:
    """Whether `user_id` made the response, and its input + output tokens (None: unknown
    yet, the response is still being made or its record being written)."""
    recent = response_owner(response_id)
    if recent is not None and (recent[0] != user_id or recent[1] is not None):
        return recent[0] == user_id, recent[1]
    found = await in_db_thread(_owned, user_id, response_id)
    if found[0] or recent is not None:
        return True, found[1]
    # Made a moment ago by another server process whose record is not written yet: give that
    # write a moment before answering 404 (only unknown ids pay this wait).
    await asyncio.sleep(_OWNER_WRITE_GRACE)
    return await in_db_thread(_owned, user_id, response_id)


async def _owns_response(user_id: int, response_id: str) -> bool:
    return (await _response_history(user_id, response_id))[0]


async def _send(
    ex: Exchange, method: str, path: str, body: bytes | None, request: HttpRequest, query: str = ""
) -> aiohttp.ClientResponse | HttpResponse:
    try:
        resp = await ex.waiting_upstream(
            upstream.open_request(
                method,
                path,
                headers=upstream.upstream_headers(dict(request.headers), ex.key.user_id),
                body=body,
                query=query,
            )
        )
        ex.upstream_status = resp.status
        return resp
    except upstream.PoolBusy:
        return refuse(ex, errors.upstream_busy(), "upstream_busy")
    except TimeoutError:
        return refuse(ex, errors.upstream_timeout(), "upstream_timeout")
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__)
        return refuse(
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
        data = await ex.waiting_upstream(resp.read())
    except TimeoutError:
        resp.close()
        return refuse(ex, errors.upstream_timeout(), "upstream_timeout")
    except (aiohttp.ClientError, OSError):
        resp.close()
        return refuse(
            ex,
            errors.upstream_unreachable("The connection to OpenAI broke."),
            "upstream_unreachable",
        )
    finally:
        resp.release()
    ex.first_byte()
    return data


async def _send_and_read(
    ex: Exchange, method: str, path: str, body: bytes | None, request: HttpRequest, query: str = ""
) -> tuple[aiohttp.ClientResponse, bytes] | HttpResponse:
    """Send a request upstream and read its whole answer: (the response, its body), or the
    error response (already recorded) when it could not be sent or read, or upstream refused
    the operator's key."""
    resp = await _send(ex, method, path, body, request, query=query)
    if isinstance(resp, HttpResponse):
        return resp
    if resp.status == 401:
        resp.release()
        return _upstream_auth_failed(ex, resp)
    data = await _read_all(ex, resp)
    return data if isinstance(data, HttpResponse) else (resp, data)


def _gone() -> HttpResponse:
    # The answer to a client that already left: nobody reads it.
    return HttpResponse(status=499)


async def _prices() -> PriceBook | None:
    """The price table: cached, else read; while the database is away, the last one read
    (prices do not change because the database blinked). None if there never was one."""
    book = price_book_cached()
    if book is not None:
        return book
    try:
        return await in_db_thread(price_book)
    except UNAVAILABLE:
        return price_book_cached(stale_ok=True)


def _caller(request: HttpRequest) -> tuple[KeyInfo | None, Any]:
    """The key and time the ASGI handler checked it at (proxyserver.asgi), before the body
    was read; (None, now) under WSGI, which authenticates here."""
    key = getattr(request, "proxy_key", None)
    return (key, request.received_at) if key is not None else (None, timezone.now())


@csrf_exempt
async def relay(request: HttpRequest, path: str, url_key: str | None = None) -> HttpResponse:
    # `now` once: for the expiry check, the record and the quota period.
    key, now = _caller(request)
    if key is None:
        key = await authenticate(request, url_key, now)
        if isinstance(key, HttpResponse):
            return key
    ex = Exchange(key, path[:64], now=now)
    if getattr(request, "body_too_large", False):
        limit = settings.PROXY_MAX_BODY_BYTES
        return refuse(ex, errors.body_too_large(limit), "body_too_large")
    work = lifecycle.spawn(_handle(request, ex, path))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        ex.client_left()
        work.add_done_callback(_never_sent)
        raise


def _never_sent(work: asyncio.Task) -> None:
    if not work.cancelled() and work.exception() is None:
        response = work.result()
        if isinstance(response, RelayStreamingResponse):
            response.abandon()


async def _handle(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    """One request's work, from its parsing to its record, whatever happens on the way."""
    try:
        response = await _dispatch(request, ex, path)
    except asyncio.CancelledError:
        # Cancelled on purpose: its client left while a stream waited for upstream's
        # headers. Upstream saw the prompt, so a granted request is billed its estimate.
        ex.finish(
            499,
            estimated_text="" if ex.reservation is not None else None,
            error_code="client_disconnected",
            client_disconnected=True,
        )
        raise
    except UNAVAILABLE:
        ex.finish(503, error_code="database_unavailable")
        return errors.database_unavailable()
    except Exception:
        log.exception("relay error on /v1/%s", ex.endpoint)
        ex.finish(500, error_code="proxy_error")
        return errors.proxy_error()
    if not (ex.finished or ex.finish_later or isinstance(response, RelayStreamingResponse)):
        log.error("relay: /v1/%s answered without a record; recording it now", ex.endpoint)
        ex.finish(response.status_code, error_code="unrecorded")
    return response


async def _dispatch(request: HttpRequest, ex: Exchange, path: str) -> HttpResponse:
    method = request.method
    if path in METERED:
        if method != "POST":
            return refuse(
                ex,
                errors.openai_error(405, f"Use POST for /v1/{path}.", code="method_not_allowed"),
                "method_not_allowed",
            )
        return await _metered(request, ex, METERED[path])
    if path == "files" or path.startswith("files/"):
        from relay.objects import files  # it builds on this module's forwarding

        return await files(request, ex, path)
    if path == "batches" or path.startswith("batches/"):
        from relay.batches import batches  # it builds on this module's forwarding

        return await batches(request, ex, path)
    if path in MEDIA_ROUTES:
        from relay.media_views import media  # it builds on this module's forwarding

        return await media(request, ex, MEDIA_ROUTES[path], path)
    if path == "models" and method == "GET":
        return await _models(request, ex)
    match = _MODEL_PATH.fullmatch(path)
    if match and method == "GET":
        return await _model(request, ex, match.group(1))
    match = _RESPONSE_PATH.fullmatch(path)
    if match and (method == "GET" or (method == "DELETE" and not match.group(2))):
        return await _stored_response(request, ex, path, match.group(1))
    match = _NOT_RELAYED.match(path)
    if match:
        return refuse(
            ex,
            errors.openai_error(
                403,
                f"This proxy does not relay /v1/{match.group(1)} yet: what it stores lives on the "
                "one OpenAI account every user of the proxy shares, and the proxy does not yet "
                "keep it to its owner and meter it. Nothing was sent to OpenAI.",
                code="route_not_supported",
            ),
            "route_not_supported",
        )
    return refuse(ex, errors.not_found(path), "unknown_url")


async def _parse_metered(
    request: HttpRequest, ex: Exchange, kind: str
) -> tuple[bytes, dict[str, Any], int | None, int | None] | HttpResponse:
    """Check a metered request's body as OpenAI would: (raw body, parsed body, the output
    maximum it names, the history it continues in tokens: None if not known yet), or the
    error response (already recorded)."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raw = None
    if raw is None or len(raw) > settings.PROXY_MAX_BODY_BYTES:
        # Under WSGI only: the ASGI handler refuses these before reading them.
        return refuse(ex, errors.body_too_large(settings.PROXY_MAX_BODY_BYTES), "body_too_large")
    body = loads(raw)
    if not isinstance(body, dict):
        return refuse(
            ex,
            errors.openai_error(
                400,
                "We could not parse the JSON body of your request. The body must be a JSON object.",
            ),
            "invalid_json",
        )
    if too_deep(body):
        return refuse(
            ex,
            errors.openai_error(
                400,
                f"The request body nests lists and objects more than {MAX_NESTING} levels deep.",
                code="nesting_too_deep",
            ),
            "nesting_too_deep",
        )
    model = body.get("model")
    if kind == "moderation" and model is None:
        # `model` is optional on moderations (the SDK leaves it out); OpenAI then uses this.
        model = "omni-moderation-latest"
    if model is None or model == "":
        return refuse(
            ex,
            errors.openai_error(400, "You must provide a model parameter.", param="model"),
            "missing_model",
        )
    if isinstance(model, str):
        ex.set_model(model)
    wrong = bad_type(kind, body)
    if wrong is not None:
        return _refused(ex, wrong)
    stream = body.get("stream", False)
    ex.stream = bool(stream) and kind in ("chat", "completion", "responses")
    ex.requested_tier = str(body.get("service_tier") or "")
    ex.keep_request_body(body)
    if kind == "responses" and body.get("background") is True:
        return refuse(
            ex,
            errors.openai_error(
                400,
                "background responses are not supported by this proxy: their cost is only known when fetched later. Send the request without 'background'.",
                param="background",
                code="unsupported_parameter",
            ),
            "unsupported_parameter",
        )
    history: int | None = 0
    previous = body.get("previous_response_id")
    if kind == "responses" and previous is not None:
        owned, history = (
            await _response_history(ex.key.user_id, previous)
            if isinstance(previous, str)
            else _NOT_OWNED
        )
        if not owned:
            return refuse(
                ex,
                errors.openai_error(
                    404,
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                ),
                "not_found",
            )
    if kind == "responses" and body.get("conversation") is not None:
        # Conversations live on the one shared upstream account and are not relayed yet.
        return refuse(
            ex,
            errors.openai_error(
                400,
                "Conversations are not supported by this proxy yet: continue a response with 'previous_response_id' instead of 'conversation'.",
                param="conversation",
                code="unsupported_parameter",
            ),
            "unsupported_parameter",
        )
    max_out, bad = output_maximum(kind, body)
    if bad is not None:
        return _refused(ex, bad_integer(body, bad))
    return raw, body, max_out, history


def _refused(ex: Exchange, no: Refused) -> HttpResponse:
    """A request metering refused (relay.metering.Refused), answered and recorded."""
    return refuse(
        ex, errors.openai_error(no.status, no.message, param=no.param, code=no.code), no.code
    )


def _unpriced(ex: Exchange, book: PriceBook, model: str, price: Price | None) -> HttpResponse:
    if price is None and book.resolution(model)[1] == "unknown":
        message = (
            f"The model '{model}' is unknown to this proxy: it is not in the price table by "
            f"its name, a dated snapshot, a fine-tune's base or an alias, so a key with a "
            f"budget cannot use it. Check the model name, or ask the operator to add its price "
            f"or an alias."
        )
    else:
        message = f"The model '{model}' has no price in this proxy's price table, and this key has a budget. Ask the operator to add a price."
    code = "model_not_priced"
    return refuse(ex, errors.openai_error(400, message, param="model", code=code), code)


def _not_allowed(ex: Exchange, model: str) -> HttpResponse:
    return refuse(
        ex,
        errors.openai_error(
            403,
            f"This key may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        ),
        "model_not_allowed",
    )


async def _metered(request: HttpRequest, ex: Exchange, kind: str) -> HttpResponse:
    parsed = await _parse_metered(request, ex, kind)
    if isinstance(parsed, HttpResponse):
        return parsed
    raw, body, max_out, history = parsed
    model = ex.model
    if not ex.key.model_allowed(model):
        return _not_allowed(ex, model)
    book = await _prices()
    if book is None:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    ex.book = book  # every end of this request is priced, however it ends
    price = book.price(model, ex.now)
    priced = price is not None and price.is_priced
    if not priced and ex.key.has_budget and kind != "moderation":
        return _unpriced(ex, book, model, price)
    ex.search_model = kind == "chat" and book.tool_fee("search_model", model, ex.now) is not None
    size = functools.partial(
        size_request,
        kind,
        body,
        model,
        max_out=max_out,
        strict=ex.key.strict_budget,
        history=history,
        max_input=price.max_input_tokens if price is not None else None,
        search_model=ex.search_model,
    )
    try:
        if len(raw) > _INLINE_TOKENISE_BYTES:
            sizing = await sync_to_async(size, thread_sensitive=False)()
        else:
            sizing = size()
    except Refused as no:
        return _refused(ex, no)
    ex.prompt_estimate = sizing.prompt_estimate
    ex.tools = sizing.tools
    cost = Decimal(0)
    if priced:
        worst = book.worst_case(price, sizing.ceiling, model=model, at=ex.now)
        if worst is None and ex.key.has_budget:
            return refuse(
                ex,
                errors.openai_error(
                    400,
                    f"A built-in tool in this request has no price in this proxy's price table for '{model}', and this key has a budget. Ask the operator to add its fee.",
                    param="tools",
                    code="tool_not_priced",
                ),
                "tool_not_priced",
            )
        cost = worst if worst is not None else price.worst_case_tokens(sizing.ceiling)
    refused = await grant(
        ex,
        cost=cost,
        tokens=sizing.ceiling.tokens,
        rate_tokens=sizing.rate_tokens,
        price=price,
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
    if ex.client_gone:  # left while it was being granted: never sent, nothing billed
        ex.finish(499, error_code="client_disconnected", client_disconnected=True)
        return _gone()
    # The client's bytes as they came, unless a field is added: then one encoding of them all.
    added: dict[str, Any] = {}
    client_wants_usage = True
    if ex.stream and kind in ("chat", "completion"):
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        client_wants_usage = options.get("include_usage") is True
        if not client_wants_usage:
            added["stream_options"] = {**options, "include_usage": True}
    if kind in identifiers.SAFETY_IDENTIFIED and settings.PROXY_SAFETY_IDENTIFIER:
        added["safety_identifier"] = identifiers.safety_identifier(
            ex.key.user_id, body.get("safety_identifier")
        )
    upstream_body = orjson.dumps({**body, **added}) if added else raw
    if ex.stream:
        # A stream whose client leaves before upstream's headers is dropped at once (see
        # _handle); a plain answer is read to the end whatever the client does, for its usage.
        ex.cancel_on_leave = asyncio.current_task()
    try:
        resp = await _send(ex, "POST", PATH_OF[kind], upstream_body, request)
    finally:
        ex.cancel_on_leave = None
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
        stream = StreamRelay(ex, resp, state, book, request_id)
        if ex.client_gone:
            stream.abandon()
            return _gone()
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        return RelayStreamingResponse(stream, headers=headers)
    data = await _read_all(ex, resp)
    if isinstance(data, HttpResponse):
        return data
    usage = None
    response_model = ""
    tier = ""
    response_id = ""
    output = None
    if resp.status == 200:
        payload = loads(data)
        if isinstance(payload, dict):
            response_model = str(payload.get("model") or "")
            tier = str(payload.get("service_tier") or "")
            if kind == "responses":
                usage = responses_usage(payload.get("usage"))
                response_id = str(payload.get("id") or "")
                output = payload.get("output")
            else:
                usage = chat_usage(payload.get("usage"))
    else:
        data = _scrub(data)
    ex.finish(
        499 if ex.client_gone and resp.status < 400 else resp.status,
        book=book,
        usage=usage,
        response_model=response_model,
        service_tier=tier,
        upstream_request_id=request_id,
        response_id=response_id,
        output=output,
        error_code=_upstream_error_code(data)
        if resp.status >= 400
        else ("client_disconnected" if ex.client_gone else ""),
        response_body=data.decode("utf-8", "replace") if ex.log_bodies else "",
    )
    return HttpResponse(data, status=resp.status, headers=headers)


def _upstream_error_code(data: bytes) -> str:
    payload = loads(data)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "upstream_error")
    return "upstream_error"


def _allowed_models_only(ex: Exchange, data: bytes) -> bytes:
    """The model list, less the models this key may not use."""
    payload = loads(data)
    if not (isinstance(payload, dict) and isinstance(payload.get("data"), list)):
        return data
    if not any(limits.models for limits in ex.key.all_limits()):
        return data
    payload["data"] = [
        m for m in payload["data"] if isinstance(m, dict) and ex.key.model_allowed(str(m.get("id")))
    ]
    return orjson.dumps(payload)


async def _models(request: HttpRequest, ex: Exchange) -> HttpResponse:
    return await _passthrough(request, ex, "models", rewrite=_allowed_models_only)


async def _model(request: HttpRequest, ex: Exchange, model: str) -> HttpResponse:
    ex.set_model(model)
    if not ex.key.model_allowed(model):
        return refuse(
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
        return refuse(
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
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        return refused
    answer = await _send_and_read(ex, request.method or "GET", path, None, request, query=query)
    if isinstance(answer, HttpResponse):
        return answer
    resp, data = answer
    if resp.status == 200 and rewrite is not None:
        data = rewrite(ex, data)
    ex.finish(
        resp.status,
        upstream_request_id=resp.headers.get("x-request-id", ""),
        error_code="" if resp.status < 400 else _upstream_error_code(data),
    )
    return HttpResponse(_scrub(data), status=resp.status, headers=_relayed_headers(resp, {}))


# -- the proxy's own endpoint ------------------------------------------------------------------


@csrf_exempt
async def proxy_me(request: HttpRequest, url_key: str | None = None) -> HttpResponse:
    """GET /v1/proxy/me: this key's limits, what it and its user spent this period, what is left."""
    key, now = _caller(request)
    if key is None:
        key = await authenticate(request, url_key, now)
        if isinstance(key, HttpResponse):
            return key
    if getattr(request, "body_too_large", False):
        return errors.body_too_large(settings.PROXY_MAX_BODY_BYTES)
    if request.method != "GET":
        return errors.openai_error(405, "Use GET for /v1/proxy/me.", code="method_not_allowed")
    try:
        report = await asyncio.wait_for(
            in_db_thread(key_usage_report, key=key, now=now), timeout=settings.PROXY_DB_TIMEOUT
        )
    except (TimeoutError, *UNAVAILABLE):
        return errors.database_unavailable()
    return JsonResponse(report)


def unknown_url(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 for a path nothing serves (proxyserver.urls handler404): OpenAI's error
    shape for API clients, Django's own page for a browser."""
    if "text/html" in request.headers.get("Accept", ""):
        from django.views import defaults

        return defaults.page_not_found(request, exception)
    return errors.openai_error(
        404,
        f"Invalid URL ({request.method} {request.path[:120]}): this proxy does not serve it.",
        code="unknown_url",
    )
