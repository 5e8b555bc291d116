"""One relayed request's bookkeeping: what it asked, what it was granted, what it cost.

An `Exchange` is made as soon as a key is recognised and is finished exactly once, whatever
happens next (refusal, upstream error, client gone), which is what guarantees one usage
record per authenticated request. A granted request's record already exists, pending, from
the reservation's transaction on (keys.services.quota_reserve); finishing completes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from django.conf import settings

from keys.ratelimit import RateTicket, rate_release
from keys.selectors import KeyInfo
from keys.services import Reservation
from relay import lifecycle, metrics, recording, request_log
from relay.metering import BuiltinTools
from relay.protocol import responses_tool_calls, server_tool_calls
from relay.tokens import count_text
from usage.models import RecordState, UsageRecord
from usage.pricing import FREE_TIERS, Price, PriceBook, TokenUsage

log = logging.getLogger(__name__)
T = TypeVar("T")
REDACTED = "[redacted]"
# Responses API ids this process handed out -> (user id, the tokens a continuation is billed
# as history: its input + output, None while unknown). Their records are written after the
# answer has gone, so a client continuing a response at once (`previous_response_id`) or
# fetching it would otherwise race the write and get a 404 for its own response.
_recent_responses: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
_RECENT_RESPONSES_MAX = 10_000
# Record ids: seeded from os.urandom, and again in a forked child, so two server processes
# never draw the same sequence (uvicorn's workers are spawned, a preloading server forks).
_uids = random.Random()
os.register_at_fork(after_in_child=_uids.seed)


def response_owner(response_id: str) -> tuple[int, int | None] | None:
    """(user, history tokens) of a response made through this process recently, if any."""
    return _recent_responses.get(response_id)


def redact(value: Any, fields: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if k in fields else redact(v, fields)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


def redacted_text(text: str) -> str:
    """A JSON body with the USAGE_REDACT_FIELDS replaced; other text as it is."""
    fields = set(settings.USAGE_REDACT_FIELDS)
    if not fields or not any(f'"{field}"' in text for field in fields):
        return text
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return orjson.dumps(redact(payload, fields)).decode()


def capped(text: str) -> str:
    limit = settings.USAGE_BODY_MAX_BYTES
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore") + f"… [truncated, {len(encoded)} bytes in all]"


class Exchange:
    def __init__(self, key: KeyInfo, endpoint: str, *, now: dt.datetime) -> None:
        self.key = key
        self.endpoint = recording.storable(endpoint)
        self.started = time.perf_counter()
        self.now = now
        self.model = ""
        self.stream = False
        self.prompt_estimate = 0
        self.reservation: Reservation | None = None
        self.ticket: RateTicket | None = None
        self.ttfb_ms: int | None = None
        self.request_body = ""
        self.log_bodies = (
            key.log_bodies if key.log_bodies is not None else settings.USAGE_LOG_BODIES
        )
        self.requested_tier = ""
        self.client_gone = False
        # Set while the request's work may be cancelled outright when its client leaves (a
        # stream waiting for upstream's headers); otherwise the work goes on without it.
        self.cancel_on_leave: asyncio.Task | None = None
        self.pending: UsageRecord | None = None
        self.book: PriceBook | None = None  # the prices this request was sized with
        # Its record's, so a write heard as failed is found again. Random like uuid4, from a
        # generator seeded once: uuid4 asks the kernel each time (a syscall per request).
        self.uid = uuid.UUID(int=_uids.getrandbits(128), version=4)
        # True when something else has taken on finishing it (a reservation still on its way).
        self.finish_later = False
        self.tools = BuiltinTools()  # the server-side tools it enabled, billed per call
        self.search_model = False  # a Chat Completions search model: one search per call
        # Seconds spent waiting for OpenAI (its headers, then its body or stream), and the
        # status it answered with (0: nothing was relayed): for the overhead and the error
        # metrics (relay.metrics).
        self.upstream_seconds = 0.0
        self.upstream_status = 0
        self._finished = False

    # -- inputs ------------------------------------------------------------------------------
    def set_model(self, model: str) -> None:
        self.model = recording.storable(model)

    def client_left(self) -> None:
        """The client hung up (or the server cancelled its request)."""
        self.client_gone = True
        if self.cancel_on_leave is not None:
            self.cancel_on_leave.cancel()

    def pending_record(self, price: Price | None) -> UsageRecord:
        """The row written with the reservation: if this process dies, the reaper completes
        it billed at the prompt's estimated input cost."""
        prompt_cost: Decimal | None = Decimal(0)
        if self.prompt_estimate and price is not None and price.is_priced:
            tier = None if self.requested_tier in FREE_TIERS else self.requested_tier
            prompt_cost = price.cost(TokenUsage(prompt=self.prompt_estimate), tier)
        elif self.prompt_estimate and price is not None:
            prompt_cost = None
        self.pending = UsageRecord(
            **self._identity(),
            service_tier=self.requested_tier[:16],
            status_code=0,
            prompt_tokens=self.prompt_estimate,
            cost_usd=prompt_cost,
            price_id=price.id if price is not None else None,
            estimated=True,
            state=RecordState.PENDING,
            process=lifecycle.TOKEN,
        )
        return self.pending

    def _identity(self) -> dict[str, object]:
        """Who asked what, when: the same on the pending row and the finished record."""
        return {
            "uid": self.uid,
            "created_at": self.now,
            "user_id": self.key.user_id,
            "api_key_id": self.key.id,
            "key_prefix": self.key.prefix,
            "endpoint": self.endpoint,
            "model": self.model[:120],
            "stream": self.stream,
        }

    def keep_request_body(self, body: object) -> None:
        if not self.log_bodies:
            return
        fields = set(settings.USAGE_REDACT_FIELDS)
        if fields:
            body = redact(body, fields)
        self.request_body = capped(orjson.dumps(body).decode())

    @property
    def finished(self) -> bool:
        return self._finished

    def claim_response(self, response_id: str, history: int | None = None) -> None:
        """Mark a Responses id as this user's at once, before its record is written (and,
        once known, the tokens a continuation of it is billed as history)."""
        if not response_id:
            return
        known = _recent_responses.get(response_id)
        if known is None or (history is not None and known[0] == self.key.user_id):
            _recent_responses[response_id] = (self.key.user_id, history)
            if len(_recent_responses) > _RECENT_RESPONSES_MAX:
                _recent_responses.popitem(last=False)

    def first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = int((time.perf_counter() - self.started) * 1000)

    async def waiting_upstream(self, answer: Awaitable[T]) -> T:
        """Await part of upstream's answer (its headers, its body), counted as upstream's time."""
        started = time.perf_counter()
        try:
            return await answer
        finally:
            self.upstream_seconds += time.perf_counter() - started

    def from_upstream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Upstream's answer chunk by chunk, the wait for each counted as upstream's time."""
        return _TimedChunks(self, chunks.__aiter__())

    def hand_over(self) -> None:
        """Its reservation outlives the request (a batch's, settled when the batch ends by
        relay.batches): no record is written now, and a later `finish` does nothing."""
        self._finished = True
        if self.ticket is not None:
            _release_later(self.ticket, 0)
            self.ticket = None

    # -- the one record ----------------------------------------------------------------------
    def finish(
        self,
        status: int,
        *,
        book: PriceBook | None = None,
        usage: TokenUsage | None = None,
        estimated_text: str | None = None,
        response_model: str = "",
        service_tier: str = "",
        error_code: str = "",
        upstream_request_id: str = "",
        response_id: str = "",
        response_body: str = "",
        client_disconnected: bool = False,
        output: list | None = None,
        partial_images: int = 0,
        estimated: bool = False,
    ) -> None:
        """Write this request's usage record (later, off the response path). Idempotent.
        `estimated`: the `usage` given is the proxy's own count, not upstream's."""
        if self._finished:
            return
        self._finished = True
        book = book or self.book
        if usage is None and estimated_text is not None:
            # Upstream sent no usage (cut stream, client gone): count what was sent and
            # streamed, and say so on the record.
            # Each built-in tool call that ran started another turn, billed the prompt again.
            turns = 1 + server_tool_calls(output)
            usage = TokenUsage(
                prompt=self.prompt_estimate * turns,
                completion=count_text(estimated_text, response_model or self.model),
            )
            estimated = True
        if usage is not None:  # tool calls that ran are billed, also when the client left
            usage = self._with_tool_calls(usage, output, partial_images)
        tier = service_tier or self.requested_tier
        cost: Decimal | None = Decimal(0)
        price: Price | None = None
        if usage is not None and book is not None:
            cost, price = book.bill(response_model or self.model, usage, tier=tier, at=self.now)
        elif usage is not None and usage.billable:
            cost = None  # no price table at all: unpriced, never $0
        usage = usage or TokenUsage()
        elapsed = time.perf_counter() - self.started
        record = self.pending if self.pending is not None else UsageRecord()
        if self.reservation is None:
            record.pk = None  # not granted: a new record (a refusal, a failure before the grant)
        fields = {
            **self._identity(),
            "response_model": recording.storable(response_model)[:120],
            "service_tier": recording.storable(tier)[:16],
            "status_code": status,
            "error_code": recording.storable(error_code)[:64],
            "stream": self.stream,
            "prompt_tokens": usage.prompt,
            "cached_tokens": usage.cached,
            "cache_write_tokens": usage.cache_write,
            "completion_tokens": usage.completion,
            "reasoning_tokens": usage.reasoning,
            "audio_input_tokens": usage.audio_input,
            "audio_output_tokens": usage.audio_output,
            "audio_cached_tokens": usage.audio_cached,
            "image_input_tokens": usage.image_input,
            "image_output_tokens": usage.image_output,
            "characters": usage.characters,
            "audio_seconds": usage.audio_seconds,
            "cost_usd": cost,
            "price_id": price.id if price is not None else None,
            "tool_calls": dict(usage.tool_calls) or None,
            "estimated": estimated,
            "client_disconnected": client_disconnected or self.client_gone,
            "latency_ms": int(elapsed * 1000),
            "ttfb_ms": self.ttfb_ms,
            "upstream_request_id": recording.storable(upstream_request_id)[:128],
            "response_id": recording.storable(response_id)[:128],
            "request_body": self.request_body,
            # Answers echo request fields (the Responses API returns `user` and `metadata`).
            "response_body": (
                capped(redacted_text(response_body)) if self.log_bodies and response_body else ""
            ),
        }
        for name, value in fields.items():
            setattr(record, name, value)
        self.claim_response(response_id, usage.total if status < 400 else None)
        if self.ticket is not None:
            _release_later(self.ticket, usage.total)
        recording.record_later(record)
        try:
            metrics.observe(self, record, elapsed, book)
        except Exception:  # a bug in counting never fails the request it counts
            log.exception("a request's metrics could not be counted")
        # Its log line at the loop's next turn: after the answer went to the client's socket
        # (most of the ~20 µs a line costs is the logging module's own).
        asyncio.get_running_loop().call_soon(request_log.write, record, self.upstream_seconds)

    def _with_tool_calls(
        self, usage: TokenUsage, output: list | None, partial_images: int
    ) -> TokenUsage:
        """The usage with the built-in tool calls OpenAI bills per call."""
        calls = responses_tool_calls(output, self.tools) if output else {}
        if partial_images and self.tools.image_model:
            calls[f"image_partial:{self.tools.image_model}"] = partial_images
        if self.search_model:
            calls["search_model"] = 1
        return dataclasses.replace(usage, tool_calls=calls) if calls else usage


class _TimedChunks:
    """An iterator, not a generator: nothing to finalise when a stream is dropped midway."""

    __slots__ = ("chunks", "ex")

    def __init__(self, ex: Exchange, chunks: AsyncIterator[bytes]) -> None:
        self.ex, self.chunks = ex, chunks

    def __aiter__(self) -> _TimedChunks:
        return self

    async def __anext__(self) -> bytes:
        started = time.perf_counter()
        try:
            return await self.chunks.__anext__()
        finally:
            self.ex.upstream_seconds += time.perf_counter() - started


_releases: set[asyncio.Task] = set()


def _release_later(ticket: RateTicket, tokens: int) -> None:
    async def release() -> None:
        try:
            await rate_release(ticket, actual_tokens=tokens)
        except Exception:
            log.exception("rate limit counters could not be released")

    task = asyncio.get_running_loop().create_task(release())
    _releases.add(task)
    task.add_done_callback(_releases.discard)
