"""One accepted realtime session (`RealtimeRelay`): the two directions relaying frames as they
come, and the session's end.

Client events are metered on their way up (a `session.update`, an item, audio appended; a
`response.create` held until it is reserved), upstream's on their way down (`response.created`,
the text and audio a response streams, its `response.done`). However the session ends, upstream's
responses are cancelled and given CANCEL_GRACE_SECONDS to say what they cost, both sockets are
closed, and every reservation ends. Sizing and reserving are relay.realtime.budget's, settling
relay.realtime.settlement's: mixed into the one class, as all three read one session's state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import orjson

from relay import lifecycle
from relay.exchange import Exchange
from relay.realtime.budget import (
    CANCEL_GRACE_SECONDS,
    ResponseMeter,
    ResponseReservations,
    SessionLimits,
    Tokens,
    _b64_size,
)
from relay.realtime.events import _CLIENT_EVENT, _PROXY_EVENT, _event_id, _reason
from relay.realtime.settlement import ResponseSettlement
from usage.pricing import Price, PriceBook, TokenUsage

log = logging.getLogger(__name__)

_TEXT_EVENTS = (
    "response.output_text.delta",
    "response.output_audio_transcript.delta",
    "response.text.delta",  # the beta protocol's names (OpenAI-Beta: realtime=v1)
    "response.audio_transcript.delta",
)
_AUDIO_EVENTS = ("response.output_audio.delta", "response.audio.delta")


class RealtimeRelay(ResponseReservations, ResponseSettlement):
    """One accepted session: frames relayed both ways as they come, each response reserved
    before it can run and settled when it is done (see relay.realtime)."""

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
