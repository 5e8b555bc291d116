"""The image and audio routes: sized, reserved, relayed and recorded like every metered call.

Each goes through the one reservation (relay.admission.grant) and leaves one record. Uploads
are relayed byte for byte (the proxy reads the form to size the request, never rewrites it).
Speech is relayed as upstream sends it (binary audio, or SSE with `stream_format: "sse"`), and
so are image and transcription streams. What each route is billed by: relay.media_metering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse

from relay import errors, lifecycle
from relay import views as base
from relay.admission import grant, refuse
from relay.exchange import Exchange
from relay.media_metering import (
    MULTIPART,
    MediaRequest,
    image_usage,
    model_of,
    read_body,
    size,
    speech_estimate,
    speech_usage_event,
    transcription_usage,
)
from relay.metering import Refused
from relay.protocol import StreamState, event_fields, loads
from relay.streaming import RelayStreamingResponse, StreamRelay
from usage.pricing import PriceBook, TokenUsage

_INLINE_BYTES = 32 * 1024
_TERMINAL = {
    "image_generation.completed",
    "image_edit.completed",
    "transcript.text.done",
    "speech.audio.done",
}


async def media(request: HttpRequest, ex: Exchange, kind: str, path: str) -> HttpResponse:
    if request.method != "POST":
        return refuse(
            ex,
            errors.openai_error(405, f"Use POST for /v1/{path}.", code="method_not_allowed"),
            "method_not_allowed",
        )
    raw = request.body
    try:
        body, form = read_body(
            kind,
            raw,
            request.headers.get("Content-Type", ""),
            None if kind in MULTIPART else loads(raw),
        )
        model = model_of(kind, body)
    except Refused as no:
        return base._refused(ex, no)
    ex.set_model(model)
    ex.keep_request_body(body)  # the form's fields only: never an uploaded file
    if not ex.key.model_allowed(model):
        return base._not_allowed(ex, model)
    book = await base._prices()
    if book is None:
        return refuse(ex, errors.database_unavailable(), "database_unavailable")
    ex.book = book
    price = book.price(model, ex.now)
    try:
        if len(raw) > _INLINE_BYTES:  # an upload: its header read, its prompt counted, off the loop
            req = await sync_to_async(size, thread_sensitive=False)(kind, model, body, form, price)
        else:
            req = size(kind, model, body, form, price)
    except Refused as no:
        return base._refused(ex, no)
    ex.stream = req.stream
    ex.prompt_estimate = req.prompt_estimate
    worst = book.worst_case(price, req.ceiling, model=model, at=ex.now) if price else None
    if worst is None and ex.key.has_budget:
        return _unpriced(ex, book, model, req)
    refused = await grant(
        ex,
        cost=worst or Decimal(0),
        tokens=req.ceiling.tokens,
        rate_tokens=req.ceiling.tokens,
        price=price,
    )
    if refused is not None:
        return refused
    return await _forward(request, ex, req, raw, path, book)


def _unpriced(ex: Exchange, book: PriceBook, model: str, req: MediaRequest) -> HttpResponse:
    if req.per_image_fee and book.price(model, ex.now) is not None:
        quality, _, size_ = req.per_image_fee.removeprefix("image:").partition(":")
        message = (
            f"The proxy has no price for a {quality} {size_} image of '{model}', and this key "
            f"has a budget. Check 'size' and 'quality', or ask the operator to add the fee."
        )
        return refuse(
            ex,
            errors.openai_error(400, message, param="size", code="model_not_priced"),
            "model_not_priced",
        )
    return base._unpriced(ex, book, model, None)


async def _forward(
    request: HttpRequest, ex: Exchange, req: MediaRequest, raw: bytes, path: str, book: PriceBook
) -> HttpResponse:
    if ex.client_gone:  # left while it was being granted: never sent, nothing billed
        ex.finish(499, error_code="client_disconnected", client_disconnected=True)
        return base._gone()
    streamed = req.stream or req.kind == "speech"
    if streamed:
        ex.cancel_on_leave = asyncio.current_task()
    try:
        resp = await base._send(ex, "POST", path, raw, request)
    finally:
        ex.cancel_on_leave = None
    if isinstance(resp, HttpResponse):
        return resp
    if resp.status == 401:
        resp.release()
        return base._upstream_auth_failed(ex, resp)
    headers = base._relayed_headers(resp, base._quota_headers(ex.reservation, ex.key))
    request_id = resp.headers.get("x-request-id", "")
    content_type = resp.headers.get("content-type", "")
    if resp.status == 200 and content_type.startswith("text/event-stream"):
        stream = StreamRelay(ex, resp, MediaStream(req), book, request_id)
        return _streaming(ex, stream, headers)
    if resp.status == 200 and req.kind == "speech":
        return _streaming(ex, AudioRelay(ex, resp, req, book, request_id), headers)
    data = await base._read_all(ex, resp)
    if isinstance(data, HttpResponse):
        return data
    usage, estimated = _billed(req, resp.status, content_type, data)
    ex.finish(
        499 if ex.client_gone and resp.status < 400 else resp.status,
        book=book,
        usage=usage,
        estimated=estimated,
        upstream_request_id=request_id,
        error_code=base._upstream_error_code(data)
        if resp.status >= 400
        else ("client_disconnected" if ex.client_gone else ""),
        response_body=_loggable(data, content_type) if ex.log_bodies else "",
    )
    if resp.status >= 400:
        data = base._scrub(data)
    return HttpResponse(data, status=resp.status, headers=headers)


def _streaming(ex: Exchange, stream: StreamRelay, headers: dict[str, str]) -> HttpResponse:
    if ex.client_gone:
        stream.abandon()
        return base._gone()
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    return RelayStreamingResponse(stream, headers=headers)


def _loggable(data: bytes, content_type: str) -> str:
    # Images come back as base64 (megabytes): the record keeps their usage, not their pixels.
    payload = loads(data) if content_type.startswith("application/json") else None
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = {**payload, "data": [{"omitted": "image"} for _ in payload["data"]]}
        return orjson.dumps(payload).decode()
    return data[:4096].decode("utf-8", "replace")


def _billed(
    req: MediaRequest, status: int, content_type: str, data: bytes
) -> tuple[TokenUsage | None, bool]:
    """(what a whole answer is billed, whether the proxy estimated it)."""
    if status != 200:
        return None, False
    if req.kind.startswith("image_"):
        payload = loads(data)
        return (image_usage(req, payload) if isinstance(payload, dict) else None), False
    # Transcriptions and translations: JSON (with usage), or text / srt / vtt (without).
    payload = loads(data) if content_type.startswith("application/json") else None
    return transcription_usage(req, payload, data.decode("utf-8", "replace"))


class MediaStream(StreamState):
    """An image, transcription or speech SSE stream: usage is in its terminal event."""

    def __init__(self, req: MediaRequest) -> None:
        super().__init__()
        self.req = req

    def on_event(self, event: bytes) -> bytes | None:
        name, data = event_fields(event)
        if not data or (b'"usage"' not in data and b".delta" in data[:80]):
            if b"transcript.text.delta" in data[:80]:
                self._keep(data)
            return event
        payload = loads(data)
        if not isinstance(payload, dict):
            return event
        kind = name or str(payload.get("type") or "")
        if kind in _TERMINAL:
            self.finished = True
            if kind == "speech.audio.done":
                self.usage = speech_usage_event(payload)
            elif kind == "transcript.text.done":
                self.usage, _ = transcription_usage(self.req, payload, "")
            else:
                self.usage = image_usage(self.req, payload) or self.usage
        return event

    def _text_of(self, datas: list[bytes]) -> str:
        deltas = (loads(data) for data in datas)
        return "".join(
            d["delta"] for d in deltas if isinstance(d, dict) and isinstance(d.get("delta"), str)
        )


class _NoEvents(StreamState):
    def _text_of(self, datas: list[bytes]) -> str:
        return ""


class AudioRelay(StreamRelay):
    """Speech as binary audio: relayed chunk by chunk, billed by what it is (characters),
    or by the length of the audio that went out (token models send no usage)."""

    def __init__(
        self,
        ex: Exchange,
        resp: aiohttp.ClientResponse,
        req: MediaRequest,
        book: PriceBook,
        request_id: str,
    ) -> None:
        super().__init__(ex, resp, _NoEvents(), book, request_id)
        self.req = req
        self.sent = 0

    def end(self, outcome: str) -> None:
        if not self.stop(outcome):
            return
        usage = speech_estimate(self.req, self.sent)
        self.ex.finish(
            499 if outcome == "client_gone" else 200,
            book=self.book,
            usage=usage,
            estimated=not self.req.characters,
            upstream_request_id=self.request_id,
            error_code="" if outcome == "done" else _AUDIO_ERRORS.get(outcome, outcome),
            client_disconnected=outcome == "client_gone",
        )

    async def events(self) -> AsyncIterator[bytes]:
        lifecycle.open_streams.add(self)
        outcome = "client_gone"  # what a CancelledError / GeneratorExit below means
        try:
            try:
                async for chunk in self.ex.from_upstream(self.resp.content.iter_any()):
                    self.ex.first_byte()
                    self.sent += len(chunk)
                    yield chunk
                outcome = "done"
            except (aiohttp.ClientError, OSError, TimeoutError):
                outcome = "shutdown" if self.interrupted else "cut"
        finally:
            self.end(outcome)


_AUDIO_ERRORS = {
    "client_gone": "client_disconnected",
    "cut": "stream_interrupted",
    "shutdown": "proxy_shutdown",
}
