"""Before the handshake of a realtime WebSocket, and its refusals (answered as an HTTP error in
OpenAI's shape, as OpenAI answers it): the proxy key (`Authorization: Bearer`, the key-in-URL
form `/<key>/v1/realtime`, or the browser form `Sec-WebSocket-Protocol: realtime,
openai-insecure-api-key.<key>`), the model (`?model=`) allowed for the key and priced when the
key has a budget, `call_id` refused (it would attach to a WebRTC call on the one shared upstream
account: another user's), the session's own grant (revocation, request caps, RPM; a budget
already spent is refused here), and OpenAI's own handshake with the one upstream key. Each
refusal after the key was recognised leaves one usage record, as for any request.

Once both sides are connected the session is accepted, and `serve` relays it to its end
(relay.realtime.session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from urllib.parse import parse_qs

import aiohttp
from django.http import HttpResponse
from django.utils import timezone

from keys.ratelimit import rate_release
from relay import errors, lifecycle, upstream
from relay.admission import grant, refuse
from relay.auth import authenticate_secret, secret_from
from relay.database import UNAVAILABLE, in_db_thread
from relay.exchange import Exchange
from relay.realtime.events import _error_of, _reason
from relay.realtime.session import RealtimeRelay
from usage.pricing import PriceBook, price_book, price_book_cached

log = logging.getLogger(__name__)

SESSION_ENDPOINT = "realtime"
_KEY_PROTOCOL = "openai-insecure-api-key."
_BETA_PROTOCOL = "openai-beta.realtime-v1"


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def secret_of(scope: dict, url_key: str | None) -> str:
    """The proxy key a handshake presents: in its URL, its bearer value, else the browser
    subprotocol `openai-insecure-api-key.<key>` (browsers cannot set headers on a WebSocket)."""
    secret = secret_from(_header(scope, b"authorization"), url_key)
    if secret:
        return secret
    for protocol in scope.get("subprotocols") or ():
        if protocol.startswith(_KEY_PROTOCOL):
            return protocol[len(_KEY_PROTOCOL) :]
    return ""


async def refuse_handshake(scope: dict, receive, send, response: HttpResponse) -> None:  # noqa: ANN001
    """Answer a WebSocket handshake with `response` (an HTTP error in OpenAI's shape), after
    its `websocket.connect`. A server without the ASGI http.response extension can only close:
    then with 1008 and the error's message as the reason."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await _deny(scope, send, response)


async def _deny(scope: dict, send, response: HttpResponse) -> None:  # noqa: ANN001
    body = response.content
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(name.lower().encode(), value.encode()) for name, value in response.items()]
        headers.append((b"content-length", str(len(body)).encode()))
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    error = _error_of(response)
    await send({"type": "websocket.close", "code": 1008, "reason": _reason(error["message"])})


async def _prices() -> PriceBook | None:
    book = price_book_cached()
    if book is not None:
        return book
    try:
        return await in_db_thread(price_book)
    except UNAVAILABLE:
        return price_book_cached(stale_ok=True)


def _refused(ex: Exchange, status: int, message: str, code: str, param: str | None) -> HttpResponse:
    return refuse(ex, errors.openai_error(status, message, param=param, code=code), code)


async def serve(scope: dict, receive, send, url_key: str | None) -> None:  # noqa: ANN001
    """One WebSocket at /v1/realtime (proxyserver.asgi routes it here): refused before the
    handshake, or accepted and relayed until either side leaves. The work runs as its own
    task, shielded from the server's cancelling this one: a reservation being made is still
    learnt, and every one made is ended (relay.lifecycle waits for it at shutdown)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    started: list[RealtimeRelay] = []
    work = lifecycle.spawn(_session(scope, receive, send, url_key, started))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        for relay in started:
            relay.client_left()
        raise


async def _session(
    scope: dict,
    receive,  # noqa: ANN001 (ASGI callables)
    send,  # noqa: ANN001
    url_key: str | None,
    started: list[RealtimeRelay],
) -> None:
    accepted = False
    try:
        relay = await _admit(scope, send, url_key)
        if relay is None:
            return
        accepted = True
        started.append(relay)
        await relay.run(receive)
    except Exception:
        # A bug: the client gets an answer, never a traceback; the log gets no path (a path
        # can hold a proxy key).
        log.exception("realtime relay error")
        if not accepted:
            with contextlib.suppress(Exception):
                await _deny(scope, send, errors.proxy_error())


async def _admit(scope: dict, send, url_key: str | None) -> RealtimeRelay | None:  # noqa: ANN001
    """Everything before the handshake; the relay once both sides are connected, else None
    (the client was answered, and a recognised key's refusal recorded)."""
    now = timezone.now()
    key = await authenticate_secret(secret_of(scope, url_key), now)
    if isinstance(key, HttpResponse):
        await _deny(scope, send, key)
        return None
    ex = Exchange(key, SESSION_ENDPOINT, now=now)
    ex.stream = True
    try:
        return await _admit_session(scope, send, ex)
    except BaseException:
        # Whatever went wrong, the session's record is written and its reservation ended.
        if not ex.finished and not ex.finish_later:
            ex.finish(500, error_code="proxy_error")
        raise


async def _admit_session(scope: dict, send, ex: Exchange) -> RealtimeRelay | None:  # noqa: ANN001
    key, now = ex.key, ex.now
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    model = (query.get("model") or [""])[0]
    refusal: HttpResponse | None = None
    if not model:
        refusal = _refused(
            ex,
            400,
            "You must provide a model parameter: /v1/realtime?model=...",
            "missing_model",
            "model",
        )
    elif "call_id" in query:
        refusal = _refused(
            ex,
            400,
            "Attaching to a WebRTC call ('call_id') is not supported by this proxy.",
            "unsupported_parameter",
            "call_id",
        )
    if refusal is not None:
        await _deny(scope, send, refusal)
        return None
    ex.set_model(model)
    if not key.model_allowed(model):
        await _deny(
            scope,
            send,
            _refused(
                ex, 403, f"This key may not use the model '{model}'.", "model_not_allowed", "model"
            ),
        )
        return None
    book = await _prices()
    if book is None:
        await _deny(scope, send, refuse(ex, errors.database_unavailable(), "database_unavailable"))
        return None
    ex.book = book
    price = book.price(model, now)
    priced = price is not None and price.is_priced
    if not priced and key.has_budget:
        message = (
            f"The model '{model}' has no price in this proxy's price table, and this key has a "
            f"budget. Ask the operator to add a price."
        )
        await _deny(scope, send, _refused(ex, 400, message, "model_not_priced", "model"))
        return None
    refused = await grant(ex, cost=Decimal(0), tokens=0, rate_tokens=0)
    if refused is not None:
        await _deny(scope, send, refused)
        return None
    if ex.ticket is not None:
        # The session counted as one request; its responses hold the concurrency slots while
        # they run (a session holding one too would stop a key limited to 1 at its first).
        ticket, ex.ticket = ex.ticket, None
        await rate_release(ticket, actual_tokens=0)
    if _budget_spent(ex):
        ex.finish(429, error_code="insufficient_quota")
        await _deny(
            scope,
            send,
            errors.insufficient_quota(
                "The budget of this key is spent: no realtime response can be paid for. "
                "Check your usage at /v1/proxy/me."
            ),
        )
        return None
    client_headers = {"user-agent": _header(scope, b"user-agent")}
    subprotocols = scope.get("subprotocols") or []
    beta = _header(scope, b"openai-beta") or (
        "realtime=v1" if _BETA_PROTOCOL in subprotocols else ""
    )
    if beta:
        client_headers["openai-beta"] = beta
    forwarded = scope.get("query_string", b"").decode("latin-1")
    try:
        ws, request_id = await upstream.realtime_connect(
            query=forwarded, client_headers=client_headers
        )
    except upstream.HandshakeRefused as exc:
        await _deny(scope, send, _handshake_refused(ex, exc))
        return None
    except TimeoutError:
        await _deny(scope, send, refuse(ex, errors.upstream_timeout(), "upstream_timeout"))
        return None
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("realtime upstream unreachable: %s", type(exc).__name__)
        unreachable = errors.upstream_unreachable("The proxy could not reach OpenAI.")
        await _deny(scope, send, refuse(ex, unreachable, "upstream_unreachable"))
        return None
    relay = RealtimeRelay(ex=ex, book=book, price=price, ws=ws, send=send, request_id=request_id)
    try:
        await send(
            {
                "type": "websocket.accept",
                # A browser that offered subprotocols fails a handshake that picks none; the
                # key's own is never echoed.
                "subprotocol": "realtime" if "realtime" in subprotocols else None,
                "headers": [(b"x-request-id", request_id.encode("latin-1"))] if request_id else [],
            }
        )
    except Exception:  # noqa: BLE001 (the client left during the handshake)
        await ws.close()
        ex.finish(
            499,
            error_code="client_disconnected",
            client_disconnected=True,
            upstream_request_id=request_id,
        )
        return None
    ex.first_byte()
    return relay


def _budget_spent(ex: Exchange) -> bool:
    reservation = ex.reservation
    if reservation is None:
        return False
    for limits, state in reservation.states(ex.key):
        left = limits.remaining(state).usd
        if left is not None and left <= 0:
            return True
    return False


def _handshake_refused(ex: Exchange, exc: upstream.HandshakeRefused) -> HttpResponse:
    if exc.status == 401:
        # The operator's key is wrong, not the user's (as relay.views says for HTTP).
        log.error("OpenAI rejected the proxy's upstream key (401) on a realtime handshake")
        response = errors.openai_error(
            502,
            "OpenAI rejected the proxy's upstream key; the operator must fix OPENAI_API_KEY.",
            type="upstream_error",
            code="upstream_auth_failed",
        )
    else:
        response = errors.openai_error(
            exc.status if 400 <= exc.status < 600 else 502,
            f"OpenAI refused the realtime connection (HTTP {exc.status}).",
            type="invalid_request_error" if 400 <= exc.status < 500 else "upstream_error",
            code="upstream_refused",
        )
    if exc.request_id:
        response["x-request-id"] = exc.request_id
    ex.finish(
        response.status_code,
        error_code=_error_of(response)["code"],
        upstream_request_id=exc.request_id,
    )
    return response
