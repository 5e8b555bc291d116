"""The Realtime API through the proxy: the WebSocket at /v1/realtime, relayed both ways, metered.

Before the handshake (answered as an HTTP error in OpenAI's shape, as OpenAI answers it): the
proxy key (`Authorization: Bearer`, the key-in-URL form `/<key>/v1/realtime`, or the browser
form `Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key>`), the model (`?model=`)
allowed for the key and priced when the key has a budget, `call_id` refused (it would attach
to a WebRTC call on the one shared upstream account: another user's), the session's own grant
(revocation, request caps, RPM; a budget already spent is refused here), and OpenAI's own
handshake with the one upstream key. Each refusal after the key was recognised leaves one
usage record, as for any request.

Records: one for the session (endpoint `realtime`, status 101, latency = the session's
length, cost 0 — except for what upstream billed for a response the proxy refused to reserve
and cancelled at once, which is the session's so the ledger has it), and one per response
(endpoint `realtime/response`, its `response.done` usage priced at the model's text and audio
rates, status 200; error_code the response's status when not `completed`).

Reservations: a client's `response.create` is held until `grant()` has reserved the most that
response can cost; a response upstream starts by itself (server VAD: `response.created` with
no client create waiting) is reserved when it is seen. The input is bounded by the last
response's input + output (its real usage) plus everything added since — instructions and
tool definitions, items' text (tiktoken) and audio (10 tokens a second: 4,800 bytes of 24 kHz
pcm16, 800 of G.711) — and by the model's context size when the price table knows it; all of
it at the audio input rate. The output is bounded by the response's (else the session's)
`max_output_tokens`, `inf` being OpenAI's documented cap of 4,096, all of it at the audio
output rate. A refused reservation sends the client an `error` event (`insufficient_quota`,
or the rate limit's type) and ends the session: upstream's responses are cancelled and the
socket closed with 1008.

Every reservation ends: at its `response.done` (settled to the real usage); when the client
leaves, the proxy cancels upstream's responses and waits up to CANCEL_GRACE_SECONDS for their
`response.done` (real usage, status 499); what never got one (upstream gone, the wait over, a
shutdown) is billed at the proxy's estimate (the input bound's text and audio, the text and
audio streamed), marked estimated; a create upstream never started is released.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
from django.http import HttpResponse
from django.utils import timezone

from keys.ratelimit import rate_release
from relay import errors, lifecycle, media, upstream
from relay.admission import grant, refuse
from relay.auth import authenticate_secret, secret_from
from relay.database import UNAVAILABLE, in_db_thread
from relay.exchange import Exchange
from relay.tokens import count_text
from usage.pricing import Ceiling, Price, PriceBook, TokenUsage, price_book, price_book_cached

log = logging.getLogger(__name__)

SESSION_ENDPOINT = "realtime"
RESPONSE_ENDPOINT = "realtime/response"
SESSION_STATUS = 101  # the record of a session that was relayed: it switched protocols
# OpenAI: max_output_tokens is 1 to 4096, or "inf" for the model's most (the same cap).
MAX_OUTPUT_TOKENS = 4096
# Input audio is 10 tokens a second: bytes a token for each format (pcm16 at 24 kHz, G.711 at
# 8 kHz). A format the proxy does not know is counted as the densest.
_BYTES_PER_TOKEN = {
    "audio/pcm": 4800,
    "pcm16": 4800,
    "audio/pcmu": 800,
    "audio/pcma": 800,
    "g711_ulaw": 800,
    "g711_alaw": 800,
}
_DENSEST = min(_BYTES_PER_TOKEN.values())
# Output audio is estimated (only when upstream's usage never came) at 20 tokens a second.
_OUTPUT_AUDIO_BYTES_PER_TOKEN = 2400
# How long upstream has to answer the cancel of a response whose client left (its
# response.done carries the real usage), and to finish what it started when a session ends.
CANCEL_GRACE_SECONDS = 2.0
_KEY_PROTOCOL = "openai-insecure-api-key."
_BETA_PROTOCOL = "openai-beta.realtime-v1"
# A WebSocket close reason is at most 123 bytes.
_REASON_BYTES = 123
_TEXT_EVENTS = (
    "response.output_text.delta",
    "response.output_audio_transcript.delta",
    "response.text.delta",  # the beta protocol's names (OpenAI-Beta: realtime=v1)
    "response.audio_transcript.delta",
)
_AUDIO_EVENTS = ("response.output_audio.delta", "response.audio.delta")


# -- before the handshake -------------------------------------------------------------------------


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


def _reason(text: str) -> str:
    return text.encode()[:_REASON_BYTES].decode("utf-8", "ignore")


def _error_of(response: HttpResponse) -> dict[str, Any]:
    try:
        error = orjson.loads(response.content)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error = None
    if not isinstance(error, dict):
        return {"type": "server_error", "code": "proxy_error", "message": "Refused."}
    return error


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
    for limits, state in (
        (ex.key.key_limits, reservation.key_state),
        (ex.key.user_limits, reservation.user_state),
    ):
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


# -- metering one session -------------------------------------------------------------------------


@dataclasses.dataclass
class Tokens:
    """Text and audio tokens (of a conversation, of what was added to it)."""

    text: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio


@dataclasses.dataclass
class ResponseMeter:
    """One response's reservation and what the proxy saw of it."""

    ex: Exchange
    input: Tokens  # its input as the proxy bounded it (the estimate if no usage comes)
    snapshot: Tokens  # the session's context when it was sized
    in_conversation: bool = True
    event_id: str | None = None
    response_id: str = ""
    text_out: list[str] = dataclasses.field(default_factory=list)
    audio_out_bytes: int = 0

    def estimate(self) -> TokenUsage:
        """Its usage as the proxy counts it: the input bound, and what was streamed."""
        text = count_text("".join(self.text_out), self.ex.model)
        audio = math.ceil(self.audio_out_bytes / _OUTPUT_AUDIO_BYTES_PER_TOKEN)
        return TokenUsage(
            prompt=self.input.total,
            audio_input=self.input.audio,
            completion=text + audio,
            audio_output=audio,
        )


def realtime_usage(usage: object) -> TokenUsage | None:
    """A `response.done` usage (GA and beta alike) as the proxy prices it. Cached tokens are
    all billed at the cached text rate (the price table's cached audio rate is not applied:
    the same on gpt-realtime, not on the mini models); audio input is the uncached audio."""
    if not isinstance(usage, dict):
        return None

    def number(mapping: object, name: str) -> int:
        value = mapping.get(name) if isinstance(mapping, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    details = usage.get("input_token_details")
    cached_details = details.get("cached_tokens_details") if isinstance(details, dict) else None
    out_details = usage.get("output_token_details")
    prompt = number(usage, "input_tokens")
    cached = min(number(details, "cached_tokens"), prompt)
    audio_in = number(details, "audio_tokens")
    cached_audio = min(number(cached_details, "audio_tokens"), audio_in, cached)
    completion = number(usage, "output_tokens")
    return TokenUsage(
        prompt=prompt,
        cached=cached,
        completion=completion,
        audio_input=audio_in - cached_audio,
        audio_output=min(number(out_details, "audio_tokens"), completion),
    )


def _split(usage: TokenUsage | None, raw: object) -> Tokens:
    """A finished response's input + output as text and audio: the next one reads it all."""
    if usage is None:
        return Tokens()
    details = raw.get("input_token_details") if isinstance(raw, dict) else None
    audio_in = details.get("audio_tokens") if isinstance(details, dict) else 0
    audio_in = audio_in if isinstance(audio_in, int) and audio_in > 0 else 0
    audio = min(audio_in, usage.prompt) + usage.audio_output
    return Tokens(text=usage.total - audio, audio=audio)


def _b64_size(data: object) -> int:
    """Bytes a base64 string decodes to, without decoding it."""
    if not isinstance(data, str) or not data:
        return 0
    return len(data) * 3 // 4 - data[-2:].count("=")


def _max_output(value: object) -> int | None:
    """A max_output_tokens as a bound: an int as it is, "inf" the cap, else None (absent)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if value == "inf":
        return MAX_OUTPUT_TOKENS
    return None


def _session_max_output(session: dict[str, Any]) -> int | None:
    for name in ("max_output_tokens", "max_response_output_tokens"):
        if name in session:
            return _max_output(session[name])
    return None


def _session_bytes_per_token(session: dict[str, Any]) -> int | None:
    audio = session.get("audio")
    fmt = None
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        given = audio["input"].get("format")
        fmt = given.get("type") if isinstance(given, dict) else given
    if fmt is None and "input_audio_format" in session:
        fmt = session["input_audio_format"]
    if fmt is None:
        return None
    return _BYTES_PER_TOKEN.get(fmt, _DENSEST) if isinstance(fmt, str) else _DENSEST


class SessionLimits:
    """The session settings a reservation is sized with: what upstream confirmed, made worse
    by every client `session.update` not confirmed yet (a response.create may follow an
    update at once: it is sized as if the update had already applied, or had not, whichever
    costs more)."""

    def __init__(self) -> None:
        self.max_output = MAX_OUTPUT_TOKENS  # OpenAI's default is "inf"
        self.bytes_per_token = _BYTES_PER_TOKEN["audio/pcm"]
        self.unconfirmed: collections.deque[tuple[int | None, int | None]] = collections.deque()

    def asked(self, session: dict[str, Any]) -> None:
        self.unconfirmed.append((_session_max_output(session), _session_bytes_per_token(session)))

    def confirmed(self, session: dict[str, Any], *, answer: bool) -> None:
        if answer and self.unconfirmed:
            self.unconfirmed.popleft()
        max_output = _session_max_output(session)
        if max_output is not None:
            self.max_output = max_output
        bytes_per_token = _session_bytes_per_token(session)
        if bytes_per_token is not None:
            self.bytes_per_token = bytes_per_token

    def output_bound(self) -> int:
        return max([self.max_output, *(m for m, _ in self.unconfirmed if m is not None)])

    def audio_tokens(self, size: int) -> int:
        rate = min([self.bytes_per_token, *(b for _, b in self.unconfirmed if b is not None)])
        return math.ceil(size / rate)


# Ids of the events the proxy sends itself (upstream's errors about them are not relayed),
# and of a client's response.create that came without one (its errors are).
_PROXY_EVENT = "event_proxy_"
_CLIENT_EVENT = "event_client_"


def _event_id() -> str:
    return _PROXY_EVENT + secrets.token_hex(10)


def _error_event(error: dict[str, Any], client_event_id: object) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": _event_id(),
        "error": {
            "type": error.get("type") or "invalid_request_error",
            "code": error.get("code"),
            "message": error.get("message") or "",
            "param": error.get("param"),
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        },
    }


class RealtimeRelay:
    """One accepted session: frames relayed both ways as they come, each response reserved
    before it can run and settled when it is done (see the module)."""

    def __init__(
        self,
        *,
        ex: Exchange,
        book: PriceBook,
        price: Price | None,
        ws: aiohttp.ClientWebSocketResponse,
        send,  # noqa: ANN001 (the ASGI send callable)
        request_id: str,
    ) -> None:
        self.ex = ex
        self.book = book
        self.price = price
        self.ws = ws
        self._send = send
        self.request_id = request_id
        self.model = ex.model
        self.response_model = ""
        self.context = Tokens()
        self.limits = SessionLimits()
        self.pending: collections.deque[ResponseMeter] = collections.deque()
        self.active: dict[str, ResponseMeter] = {}
        # Responses upstream started that the proxy could not reserve: cancelled at once, and
        # whatever they were billed goes on the session's record.
        self.unreserved: set[str] = set()
        self.unreserved_running: set[str] = set()  # of those, the ones not done yet
        self.unreserved_usage = TokenUsage()
        self.end_reason = ""  # "" while the session runs
        self.client_open = True
        self.client_close: tuple[int, str] = (1000, "")
        self._ended = asyncio.Event()
        self._created = asyncio.Event()  # upstream's session.created was read
        self._changed = asyncio.Event()
        self._granting: set[asyncio.Task] = set()  # the directions making a reservation
        self._client_lock = asyncio.Lock()
        self._upstream_lock = asyncio.Lock()

    # -- the two directions ---------------------------------------------------------------
    async def run(self, receive) -> None:  # noqa: ANN001 (the ASGI receive callable)
        lifecycle.open_streams.add(self)
        from_client = asyncio.create_task(self._guarded(self._from_client(receive)))
        from_upstream = asyncio.create_task(self._guarded(self._from_upstream()))
        try:
            await self._ended.wait()
            await self._stop(from_client)
            if self.end_reason != "upstream_closed":
                await self._wind_down(from_upstream)
            await self._close_upstream()
            await self._stop(from_upstream)
        finally:
            for task in (from_client, from_upstream):
                task.cancel()
            self._end_meters()
            self._finish_session()
            await self._close_client()
            lifecycle.open_streams.discard(self)

    async def _guarded(self, direction: Coroutine[Any, Any, None]) -> None:
        try:
            await direction
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug: the session ends (its reservations with it), never hangs.
            log.exception("realtime relay error")
            self._end("proxy_error", (1011, "The proxy failed on this session."))

    def _end(self, reason: str, close: tuple[int, str] | None = None) -> None:
        if not self.end_reason:
            self.end_reason = reason
            if close is not None:
                self.client_close = close
        self._ended.set()

    def client_left(self) -> None:
        self.client_open = False
        self._end("client_gone")

    def interrupt(self) -> None:
        """Shutdown (relay.lifecycle): end the session, billing what ran."""
        self._end("interrupted", (1012, "The proxy is restarting; connect again."))

    async def _stop(self, task: asyncio.Task) -> None:
        # A reservation being made is never cancelled half-way (it would be granted unheard):
        # the direction making it stops by itself once it has its answer.
        if task not in self._granting:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _from_client(self, receive) -> None:  # noqa: ANN001
        while not self.end_reason:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.client_left()
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                data = message.get("bytes")
                if data:
                    await self._to_upstream(bytes_=data)
                continue
            try:
                event = orjson.loads(text)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                text = await self._client_event(event, text)
                if text is None:
                    continue
            await self._to_upstream(text=text)

    async def _client_event(self, event: dict[str, Any], text: str) -> str | None:
        """Meter a client event; the text to forward (None: not forwarded)."""
        kind = event.get("type")
        if kind == "session.update" and isinstance(event.get("session"), dict):
            session = event["session"]
            self.limits.asked(session)
            self.context.text += self._instructions_and_tools(session)
        elif kind == "conversation.item.create" and isinstance(event.get("item"), dict):
            added = self._item_tokens(event["item"])
            self.context.text += added.text
            self.context.audio += added.audio
        elif kind == "input_audio_buffer.append":
            self.context.audio += self.limits.audio_tokens(_b64_size(event.get("audio")))
        elif kind == "response.create":
            if not isinstance(event.get("event_id"), str):
                # Upstream names the event it refuses: an id lets a refused create be matched
                # to its reservation (and released).
                event["event_id"] = _CLIENT_EVENT + secrets.token_hex(10)
                text = orjson.dumps(event).decode()
            meter = await self._reserve(event.get("response"), event["event_id"])
            if meter is None:
                return None
            if self.end_reason:  # the session ended while it was reserved: never sent
                meter.ex.finish(499, error_code="session_ended")
                return None
            self.pending.append(meter)
        return text

    async def _from_upstream(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._upstream_event(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await self._to_client(bytes_=message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    break
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("realtime upstream connection broke: %s", type(exc).__name__)
        self._created.set()
        code = self.ws.close_code
        self._end(
            "upstream_closed",
            (code, "OpenAI closed the session.")
            if code in (1000, 1001, 1008)
            else (1011, "The connection to OpenAI closed."),
        )
        self._changed.set()

    async def _upstream_event(self, text: str) -> None:
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            await self._to_client(text=text)
            return
        kind = event.get("type")
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        response_id = str(event.get("response_id") or response.get("id") or "")
        if kind in ("session.created", "session.updated") and isinstance(
            event.get("session"), dict
        ):
            session = event["session"]
            self.limits.confirmed(session, answer=kind == "session.updated")
            if kind == "session.created":
                self.context.text += self._instructions_and_tools(session)
                self.response_model = str(session.get("model") or "")
                self._created.set()
        elif kind == "response.created":
            if not await self._started(response_id):
                return  # refused: never shown to the client, cancelled upstream
        elif response_id in self.unreserved:
            if kind == "response.done":
                self.unreserved_running.discard(response_id)
                self._unreserved_done(response)
                self._changed.set()
            return
        elif kind in _TEXT_EVENTS and response_id in self.active:
            delta = event.get("delta")
            if isinstance(delta, str):
                self.active[response_id].text_out.append(delta)
        elif kind in _AUDIO_EVENTS and response_id in self.active:
            self.active[response_id].audio_out_bytes += _b64_size(event.get("delta"))
        elif kind == "response.done":
            self._done(response_id, response)
        elif kind == "error":
            error = event.get("error")
            if isinstance(error, dict) and str(error.get("event_id") or "").startswith(
                _PROXY_EVENT
            ):
                return  # about an event the proxy sent (a cancel): not the client's to see
            self._upstream_error(error)
        await self._to_client(text=text)

    # -- reservations -----------------------------------------------------------------------
    def _instructions_and_tools(self, config: dict[str, Any]) -> int:
        tokens = 0
        if isinstance(config.get("instructions"), str):
            tokens += count_text(config["instructions"], self.model)
        if config.get("tools"):
            tokens += count_text(orjson.dumps(config["tools"]).decode(), self.model)
        return tokens

    def _item_tokens(self, item: dict[str, Any]) -> Tokens:
        """The most an item adds to the input: its text and audio (images at their bound)."""
        found = Tokens()
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict):
                continue
            for field in ("text", "transcript"):
                if isinstance(part.get(field), str):
                    found.text += count_text(part[field], self.model)
            if "audio" in part:
                found.audio += self.limits.audio_tokens(_b64_size(part.get("audio")))
            if part.get("type") == "input_image":
                size = media.data_url_image_size(part.get("image_url"))
                found.text += media.image_tokens(self.model, size, part.get("detail"))
        for field in ("name", "arguments", "output"):
            if isinstance(item.get(field), str):
                found.text += count_text(item[field], self.model)
        return found

    def _bound(self, params: dict[str, Any]) -> tuple[Tokens, int]:
        """(the input bound of a response made with `params`, its output bound)."""
        extra = self._instructions_and_tools(params)
        if isinstance(params.get("input"), list):
            for item in params["input"]:
                if isinstance(item, dict):
                    added = self._item_tokens(item)
                    # Item references are inside the context already: counted there.
                    extra += added.total
        found = Tokens(text=self.context.text + extra, audio=self.context.audio)
        limit = self.price.max_input_tokens if self.price is not None else None
        if limit is not None and found.total > limit:
            # OpenAI truncates the conversation to the model's context: never more than it.
            audio = min(found.audio, limit)
            found = Tokens(text=limit - audio, audio=audio)
        output = None
        for name in ("max_output_tokens", "max_response_output_tokens"):
            if name in params:
                output = _max_output(params[name])
                break
        return found, (output if output is not None else self.limits.output_bound())

    async def _reserve(self, params: object, event_id: str | None) -> ResponseMeter | None:
        """Reserve one response's worst case; None if refused (the client was told and the
        session is ending)."""
        params = params if isinstance(params, dict) else {}
        if not self._created.is_set():
            # The session's default instructions are input too: known from session.created,
            # which upstream sends first (a client may send a create before it is read).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._created.wait(), timeout=CANCEL_GRACE_SECONDS)
        bound, output = self._bound(params)
        ex = Exchange(self.ex.key, RESPONSE_ENDPOINT, now=timezone.now())
        ex.set_model(self.model)
        ex.stream = True
        ex.book = self.book
        ex.prompt_estimate = bound.total
        ceiling = Ceiling(audio_input=bound.total, output=output, audio_output=True)
        cost = Decimal(0)
        if self.price is not None and self.price.is_priced:
            cost = self.price.worst_case_tokens(ceiling)
        direction = asyncio.current_task()
        if direction is not None:
            self._granting.add(direction)
        try:
            refused = await grant(
                ex,
                cost=cost,
                tokens=ceiling.tokens,
                rate_tokens=bound.total + output,
                price=self.price,
            )
        finally:
            self._granting.discard(direction)
        if refused is not None:
            await self._to_client(
                text=orjson.dumps(_error_event(_error_of(refused), event_id)).decode()
            )
            self._end("refused", (1008, _reason(_error_of(refused).get("code") or "refused")))
            return None
        ex.first_byte()
        return ResponseMeter(
            ex=ex,
            input=bound,
            snapshot=dataclasses.replace(self.context),
            in_conversation=params.get("conversation", "auto") != "none",
            event_id=event_id,
        )

    async def _started(self, response_id: str) -> bool:
        """A response.created: bind it to the oldest create waiting, else (server VAD) reserve
        it now. False if it could not be reserved (it is cancelled upstream)."""
        meter = self.pending.popleft() if self.pending else None
        if meter is None:
            # Counted as running unreserved while it is being reserved: a session that ends
            # meanwhile waits for its response.done too.
            self.unreserved_running.add(response_id)
            meter = await self._reserve({}, None)
            if meter is None:
                self.unreserved.add(response_id)
                await self._cancel_upstream(response_id)
                return False
            self.unreserved_running.discard(response_id)
        meter.response_id = response_id
        self.active[response_id] = meter
        if self.end_reason:
            await self._cancel_upstream(response_id)
        return True

    def _done(self, response_id: str, response: dict[str, Any]) -> None:
        meter = self.active.pop(response_id, None)
        self._changed.set()
        if meter is None:
            return
        raw = response.get("usage")
        usage = realtime_usage(raw)
        status = str(response.get("status") or "")
        gone = not self.client_open
        meter.ex.finish(
            499 if gone else 200,
            usage=usage if usage is not None else meter.estimate(),
            estimated=usage is None,
            response_model=self.response_model,
            response_id=response_id,
            upstream_request_id=self.request_id,
            error_code="client_disconnected" if gone else ("" if status == "completed" else status),
            client_disconnected=gone,
        )
        if meter.in_conversation:
            # The next response reads this one's input and output, and whatever came since.
            read = (
                _split(usage, raw)
                if usage is not None
                else Tokens(meter.input.text + meter.estimate().completion, meter.input.audio)
            )
            self.context = Tokens(
                text=read.text + max(self.context.text - meter.snapshot.text, 0),
                audio=read.audio + max(self.context.audio - meter.snapshot.audio, 0),
            )

    def _unreserved_done(self, response: dict[str, Any]) -> None:
        usage = realtime_usage(response.get("usage"))
        if usage is None:
            return
        total = self.unreserved_usage
        self.unreserved_usage = TokenUsage(
            prompt=total.prompt + usage.prompt,
            cached=total.cached + usage.cached,
            completion=total.completion + usage.completion,
            audio_input=total.audio_input + usage.audio_input,
            audio_output=total.audio_output + usage.audio_output,
        )

    def _upstream_error(self, error: object) -> None:
        """An error naming a client's response.create: that response never starts."""
        if not isinstance(error, dict) or not error.get("event_id"):
            return
        for meter in self.pending:
            if meter.event_id == error["event_id"]:
                self.pending.remove(meter)
                meter.ex.finish(
                    400,
                    error_code=str(error.get("code") or error.get("type") or "upstream_error"),
                    upstream_request_id=self.request_id,
                )
                self._changed.set()
                return

    # -- the end -------------------------------------------------------------------------------
    async def _cancel_upstream(self, response_id: str | None = None) -> None:
        event: dict[str, Any] = {"type": "response.cancel", "event_id": _event_id()}
        if response_id:
            event["response_id"] = response_id
        await self._to_upstream(text=orjson.dumps(event).decode())

    async def _wind_down(self, from_upstream: asyncio.Task) -> None:
        """Cancel what upstream is making and give it CANCEL_GRACE_SECONDS to say what it
        cost (its response.done), still relaying to a client that is there."""
        for response_id in list(self.active):
            await self._cancel_upstream(response_id)
        if self.pending:
            await self._cancel_upstream()  # the one it is starting now in the conversation
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while (self.active or self.pending or self.unreserved_running) and not from_upstream.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=left)

    async def _close_upstream(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    def _end_meters(self) -> None:
        """Every reservation still open ends here, however the session ended: a response
        upstream started is billed at the proxy's estimate, one it never started released."""
        status, code = {
            "client_gone": (499, "client_disconnected"),
            "upstream_closed": (502, "upstream_closed"),
            "interrupted": (503, "interrupted"),
            "refused": (429, "session_refused"),
        }.get(self.end_reason, (500, "proxy_error"))
        gone = self.end_reason == "client_gone"
        for meter in list(self.active.values()):
            meter.ex.finish(
                status,
                usage=meter.estimate(),
                estimated=True,
                response_model=self.response_model,
                response_id=meter.response_id,
                upstream_request_id=self.request_id,
                error_code=code,
                client_disconnected=gone,
            )
        self.active.clear()
        while self.pending:
            self.pending.popleft().ex.finish(
                status,
                error_code=code,
                upstream_request_id=self.request_id,
                client_disconnected=gone,
            )

    def _finish_session(self) -> None:
        code = {
            "client_gone": "",
            "upstream_closed": "upstream_closed",
            "interrupted": "interrupted",
            "refused": "insufficient_quota",
        }.get(self.end_reason, "proxy_error")
        usage = self.unreserved_usage if self.unreserved_usage.billable else None
        self.ex.finish(
            SESSION_STATUS,
            usage=usage,
            response_model=self.response_model,
            upstream_request_id=self.request_id,
            error_code=code,
        )

    async def _close_client(self) -> None:
        if not self.client_open:
            return
        self.client_open = False
        code, reason = self.client_close
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": _reason(reason)})

    # -- frames ------------------------------------------------------------------------------
    async def _to_client(self, *, text: str | None = None, bytes_: bytes | None = None) -> None:
        if not self.client_open:
            return
        message: dict[str, Any] = {"type": "websocket.send"}
        if text is not None:
            message["text"] = text
        else:
            message["bytes"] = bytes_
        async with self._client_lock:
            try:
                await self._send(message)
            except Exception:  # noqa: BLE001 (the client is gone, whatever the server says)
                self.client_left()

    async def _to_upstream(self, *, text: str | None = None, bytes_: bytes | None = None) -> None:
        if self.ws.closed:
            return
        async with self._upstream_lock:
            try:
                if text is not None:
                    await self.ws.send_str(text)
                elif bytes_ is not None:
                    await self.ws.send_bytes(bytes_)
            except (aiohttp.ClientError, OSError, RuntimeError):
                self._end("upstream_closed", (1011, "The connection to OpenAI closed."))
