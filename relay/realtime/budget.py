"""Sizing and reserving each realtime response's budget.

A client's `response.create` is held until `grant()` has reserved the most that response can
cost; a response upstream starts by itself (server VAD: `response.created` with no client
create waiting) is reserved when it is seen. The input is bounded by the last response's input
+ output (its real usage) plus everything added since — instructions and tool definitions,
items' text (tiktoken) and audio (10 tokens a second: 4,800 bytes of 24 kHz pcm16, 800 of
G.711) — and by the model's context size when the price table knows it; all of it at the audio
input rate. The output is bounded by the response's (else the session's) `max_output_tokens`,
`inf` being OpenAI's documented cap of 4,096, all of it at the audio output rate. A refused
reservation sends the client an `error` event (`insufficient_quota`, or the rate limit's type)
and ends the session: upstream's responses are cancelled and the socket closed with 1008.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
from decimal import Decimal
from typing import Any

import orjson
from django.utils import timezone

from relay import media
from relay.admission import grant
from relay.exchange import Exchange
from relay.realtime.events import _error_event, _error_of, _reason
from relay.tokens import count_text
from usage.pricing import Ceiling, TokenUsage

RESPONSE_ENDPOINT = "realtime/response"
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


class ResponseReservations:
    """Each response of a session sized and reserved: mixed into RealtimeRelay
    (relay.realtime.session), whose state it reads (the model and its price, the
    conversation's `context`, the session's `limits`) and whose frames it sends."""

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
