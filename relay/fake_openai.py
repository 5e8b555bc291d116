"""A fake OpenAI upstream for tests, benchmarks and the demo: an aiohttp.web application.

It answers chat completions, legacy completions, embeddings, Responses, moderations and
models in the shapes the official SDK parses, plain and streamed, with deterministic text and
usage counted by `relay.tokens`, so the usage it reports for a prompt equals the proxy's own
estimate. A request steers it through an optional `fake` object in its JSON body (the proxy
relays bodies untouched): latency, chunking, failures, cut streams. `/_fake/stats` and
`/_fake/reset` let tests see what reached upstream.

Serve it with `python manage.py fake_openai --port N`, or in-process with `FakeOpenAIThread`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import re
import secrets
import struct
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import tiktoken
from aiohttp import web
from aiohttp.log import access_logger

from relay import tokens

DEFAULT_KEY = "sk-fake-upstream"
DEFAULT_COMPLETION_TOKENS = 12
DEFAULT_EMBEDDING_DIMENSIONS = 8
SYSTEM_FINGERPRINT = "fp_0fa4e0c1d2"
# Bounded so a benchmark of a million Responses calls cannot grow the process without end.
MAX_STORED_RESPONSES = 10_000

# OpenAI answers an alias with the snapshot that served it; the proxy prices by that name.
SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
}
# (id, created, owned_by) as GET /v1/models lists them.
MODELS = (
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o-mini-2024-07-18", 1721172717, "system"),
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-2024-08-06", 1722814719, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("gpt-5", 1754425777, "system"),
    ("gpt-5-mini", 1754425928, "system"),
    ("o3-mini", 1737146383, "system"),
    ("o4-mini", 1744225351, "system"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("text-embedding-ada-002", 1671217299, "openai-internal"),
    ("omni-moderation-latest", 1731689265, "system"),
    ("dall-e-3", 1698785189, "system"),
)
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# OpenAI's omni model only reads images for these categories.
_IMAGE_CATEGORIES = frozenset(
    (
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "violence",
        "violence/graphic",
    )
)
# Status -> (type, code, message) when a `fail_status` knob gives no more.
_FAILURES = {
    400: ("invalid_request_error", None, "Invalid request (fake)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden (fake)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (fake)."),
    408: ("invalid_request_error", None, "Request timed out (fake)."),
    409: ("invalid_request_error", None, "Conflict (fake)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (fake)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}
_REPLY_PREFIX = "This is a fake reply number"
# A word with its leading space, or trailing space: one stream delta each by default.
_WORD = re.compile(r"\s*\S+|\s+")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape; raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


@dataclass
class FakeState:
    """What the fake saw; read by tests through /_fake/stats."""

    key: str
    latency_ms: float = 0.0
    requests: int = 0
    open_streams: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    last_request: dict[str, Any] | None = None
    responses: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    # Set once served through `start_server`; aiohttp keeps the live connections there.
    web_server: web.Server | None = None

    def remember(self, response: dict[str, Any]) -> None:
        self.responses[response["id"]] = response
        self.responses.move_to_end(response["id"])
        while len(self.responses) > MAX_STORED_RESPONSES:
            self.responses.popitem(last=False)


STATE = web.AppKey("fake_openai_state", FakeState)
_STARTED = web.RequestKey("fake_openai_started", float)
_BODY = web.RequestKey("fake_openai_body", object)
_KNOBS = web.RequestKey("fake_openai_knobs", object)


@dataclass(frozen=True)
class Knobs:
    """The request's `fake` object, checked once."""

    latency_ms: float | None = None
    chunk_delay_ms: float = 0.0
    chunks: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None
    response_model: str | None = None
    fail_status: int | None = None
    fail_type: str | None = None
    fail_code: str | None = None
    fail_message: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    should_retry: bool | None = None
    cut_after: int | None = None
    end_early_after: int | None = None
    no_usage: bool = False
    terminal: str = "completed"

    @classmethod
    def from_body(cls, body: object) -> Knobs:
        raw = body.get("fake") if isinstance(body, dict) else None
        if raw is None:
            return _NO_KNOBS
        if not isinstance(raw, dict):
            raise OpenAIError(400, "fake must be an object.", param="fake")
        values: dict[str, Any] = {}
        for name in ("latency_ms", "chunk_delay_ms"):
            if raw.get(name) is not None:
                values[name] = _number(raw, name, float)
        for name in (
            "chunks",
            "completion_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "fail_status",
            "cut_after",
            "end_early_after",
        ):
            if raw.get(name) is not None:
                values[name] = _number(raw, name, int)
        for name in ("service_tier", "response_model", "fail_type", "fail_code", "fail_message"):
            if raw.get(name) is not None:
                values[name] = str(raw[name])
        for name in ("retry_after", "retry_after_ms"):
            if raw.get(name) is not None:
                values[name] = str(raw[name])
        if raw.get("should_retry") is not None:
            values["should_retry"] = bool(raw["should_retry"])
        values["no_usage"] = bool(raw.get("no_usage", False))
        terminal = raw.get("terminal", "completed")
        if terminal not in ("completed", "incomplete", "failed"):
            raise OpenAIError(
                400, "fake.terminal must be completed, incomplete or failed.", param="fake.terminal"
            )
        values["terminal"] = terminal
        return cls(**values)


_NO_KNOBS = Knobs()


def _number(raw: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpenAIError(400, f"fake.{name} must be a number.", param=f"fake.{name}")
    return kind(value)


# --- deterministic content -------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _reply_text(encoding: str, n_tokens: int) -> str:
    """The first n tokens of "This is a fake reply number 1 2 3 …". Cut on token boundaries
    so that re-counting the text gives n again (checked for both encodings in the tests)."""
    if n_tokens <= 0:
        return ""
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # Used before any app was created (a unit test): tiktoken would try to download.
        tokens.install_encodings(_default_encodings_dir())
    encoder = tiktoken.get_encoding(encoding)
    # " 7" is two tokens in cl100k and o200k, so n/2 numbers always suffice.
    base = _REPLY_PREFIX + "".join(f" {i}" for i in range(1, n_tokens // 2 + 2))
    return encoder.decode(encoder.encode(base, disallowed_special=())[:n_tokens])


def split_pieces(text: str, chunks: int | None) -> list[str]:
    """Stream deltas: one per word by default, else `chunks` near-equal groups of words (or of
    characters, when more deltas than words are asked for)."""
    if not text:
        return []
    words = _WORD.findall(text)
    if chunks is None or chunks <= 0:
        return words
    units = words if chunks <= len(words) else list(text)
    count = min(chunks, len(units))
    size, extra = divmod(len(units), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append("".join(units[start:end]))
        start = end
    return pieces


@dataclass(frozen=True)
class Reply:
    text: str
    pieces: list[str]
    completion_tokens: int  # visible text plus reasoning, as OpenAI counts it
    reasoning_tokens: int
    truncated: bool  # a max-tokens limit cut it: finish_reason "length" / status "incomplete"


def make_reply(model: str, knobs: Knobs, limit: object) -> Reply:
    wanted = (
        DEFAULT_COMPLETION_TOKENS
        if knobs.completion_tokens is None
        else max(0, knobs.completion_tokens)
    )
    reasoning = max(0, knobs.reasoning_tokens)
    truncated = False
    if isinstance(limit, int) and not isinstance(limit, bool):
        # OpenAI's max_completion_tokens / max_output_tokens cover the hidden reasoning too.
        room = max(0, limit - reasoning)
        if wanted > room:
            wanted, truncated = room, True
    text = _reply_text(tokens.encoding_name(model), wanted)
    return Reply(
        text=text,
        pieces=split_pieces(text, knobs.chunks),
        completion_tokens=tokens.count_text(text, model) + reasoning,
        reasoning_tokens=reasoning,
        truncated=truncated,
    )


def _embedding_vector(item: object, dimensions: int) -> list[float]:
    """A unit vector that depends only on the input, so equal inputs embed equally."""
    seed = orjson.dumps(item) if not isinstance(item, str) else item.encode()
    raw = hashlib.shake_256(seed).digest(dimensions * 4)
    values = [(v / 0x7FFFFFFF) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Rounded through float32, so the float and base64 forms carry the same numbers.
    return list(
        struct.unpack(
            f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))
        )
    )


# --- request helpers -------------------------------------------------------------------------


def _ident(prefix: str, hex_chars: int) -> str:
    return prefix + secrets.token_hex(hex_chars // 2)


def _answer_model(knobs: Knobs, model: str) -> str:
    return knobs.response_model or SNAPSHOTS.get(model, model)


def _service_tier(knobs: Knobs, body: dict[str, Any]) -> str:
    if knobs.service_tier:
        return knobs.service_tier
    requested = body.get("service_tier")
    # "auto" resolves to the tier actually used: "default" for a project with no Scale Tier.
    return requested if isinstance(requested, str) and requested != "auto" else "default"


def _json_body(request: web.Request) -> dict[str, Any]:
    body = request[_BODY]
    if not isinstance(body, dict):
        raise OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but "
            "what was sent was not valid JSON.)",
        )
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter")
    return model


def _json(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _completion_usage(prompt: int, reply: Reply, knobs: Knobs) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": prompt + reply.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": min(max(0, knobs.cached_tokens), prompt),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _sse_data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def _stream(
    request: web.Request,
    knobs: Knobs,
    head: list[bytes],
    content: list[bytes],
    tail: list[bytes],
    on_complete: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Write an SSE stream. `cut_after` / `end_early_after` count `content` frames only."""
    state = request.app[STATE]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state.open_streams += 1
    try:
        stop_at = len(content)
        ending = "complete"
        if knobs.cut_after is not None and knobs.cut_after < stop_at:
            stop_at, ending = max(0, knobs.cut_after), "cut"
        elif knobs.end_early_after is not None and knobs.end_early_after < stop_at:
            stop_at, ending = max(0, knobs.end_early_after), "early"
        frames = head + content[:stop_at] + (tail if ending == "complete" else [])
        if knobs.chunk_delay_ms > 0:
            for i, frame in enumerate(frames):
                if i:
                    await _sleep_ms(knobs.chunk_delay_ms)
                # A client that hung up makes this raise ConnectionResetError (or, served with
                # handler_cancellation, cancels the task): either way the finally runs.
                await response.write(frame)
        elif frames:
            # One write with no delay asked for: the latency benchmark measures the proxy, not
            # a syscall per chunk here.
            await response.write(b"".join(frames))
        if ending == "cut":
            # Close the socket with the chunked body unfinished: close() flushes what was
            # written, so the client reads those chunks and then a broken body.
            if request.transport is not None:
                request.transport.close()
            return response
        if ending == "complete" and on_complete is not None:
            on_complete()
        await response.write_eof()
        return response
    finally:
        state.open_streams -= 1


# --- /v1 handlers ----------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    model = _model(body)
    if not isinstance(body.get("messages"), list):
        raise OpenAIError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    knobs: Knobs = request[_KNOBS]
    prompt = tokens.count_chat_prompt(body["messages"], model)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    reply = make_reply(model, knobs, limit)
    finish_reason = "length" if reply.truncated else "stop"
    usage = _completion_usage(prompt, reply, knobs)
    base = {
        "id": _ident("chatcmpl-", 30),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _answer_model(knobs, model),
        "service_tier": _service_tier(knobs, body),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not body.get("stream"):
        result = {
            **base,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if not knobs.no_usage:
            result["usage"] = usage
        return _json(result)

    base["object"] = "chat.completion.chunk"
    include_usage = _include_usage(body)
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse_data(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    head = [chunk({"role": "assistant", "content": "", "refusal": None})]
    content = [chunk({"content": piece}) for piece in reply.pieces]
    tail = [chunk({}, finish_reason)]
    if include_usage and not knobs.no_usage:
        tail.append(_sse_data({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    return await _stream(request, knobs, head, content, tail)


async def completions(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    model = _model(body)
    knobs: Knobs = request[_KNOBS]
    prompt = tokens.count_input(body.get("prompt"), model)
    reply = make_reply(model, knobs, body.get("max_tokens"))
    finish_reason = "length" if reply.truncated else "stop"
    usage = _completion_usage(prompt, reply, knobs)
    base = {
        "id": _ident("cmpl-", 30),
        "object": "text_completion",
        "created": int(time.time()),
        "model": _answer_model(knobs, model),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not body.get("stream"):
        result = {
            **base,
            "choices": [
                {"text": reply.text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if not knobs.no_usage:
            result["usage"] = usage
        return _json(result)

    include_usage = _include_usage(body)
    if include_usage:
        base["usage"] = None

    def chunk(text: str, finish: str | None = None) -> bytes:
        return _sse_data(
            {
                **base,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
        )

    content = [chunk(piece) for piece in reply.pieces]
    tail = [chunk("", finish_reason)]
    if include_usage and not knobs.no_usage:
        tail.append(_sse_data({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    return await _stream(request, knobs, [], content, tail)


async def embeddings(request: web.Request) -> web.Response:
    body = _json_body(request)
    model = _model(body)
    knobs: Knobs = request[_KNOBS]
    value = body.get("input")
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, int) for v in value)
    ):
        items: list[object] = [value]  # one string, or one prompt already in tokens
    elif isinstance(value, list) and value:
        items = list(value)
    else:
        raise OpenAIError(400, "'input' is a required property", param="input")
    dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= 8192
    ):
        raise OpenAIError(400, "dimensions must be a positive integer.", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _embedding_vector(item, dimensions)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt = tokens.count_input(value, model)
    result: dict[str, Any] = {"object": "list", "data": data, "model": _answer_model(knobs, model)}
    if not knobs.no_usage:
        result["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return _json(result)


def _response_object(
    body: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    service_tier: str,
) -> dict[str, Any]:
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": bool(body.get("background", False)),
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": {
            "code": "server_error",
            "message": "The fake upstream failed this response on request.",
        }
        if status == "failed"
        else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": service_tier,
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


async def create_response(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    model = _model(body)
    knobs: Knobs = request[_KNOBS]
    state = request.app[STATE]
    prompt = tokens.count_input(body.get("input"), model)
    reply = make_reply(model, knobs, body.get("max_output_tokens"))
    if knobs.terminal != "completed":
        status = knobs.terminal
    else:
        status = "incomplete" if reply.truncated else "completed"
    usage = None
    if not knobs.no_usage:
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {
                "cached_tokens": min(max(0, knobs.cached_tokens), prompt),
                "cache_write_tokens": 0,
            },
            "output_tokens": reply.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
            "total_tokens": prompt + reply.completion_tokens,
        }
    response_id = _ident("resp_", 48)
    message_id = _ident("msg_", 48)
    text_part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
    message = {
        "type": "message",
        "id": message_id,
        "status": "incomplete" if status == "incomplete" else "completed",
        "role": "assistant",
        "content": [text_part],
    }
    # Reasoning models list a reasoning item before the message; its tokens are hidden.
    reasoning_item = (
        {"type": "reasoning", "id": _ident("rs_", 48), "summary": []}
        if reply.reasoning_tokens
        else None
    )
    output = [reasoning_item, message] if reasoning_item else [message]
    final = functools.partial(
        _response_object,
        body,
        response_id=response_id,
        created_at=int(time.time()),
        model=_answer_model(knobs, model),
        service_tier=_service_tier(knobs, body),
    )
    finished = final(status=status, output=output, usage=usage)
    remember = body.get("store", True) is not False
    if not body.get("stream"):
        if remember:
            state.remember(finished)
        return _json(finished)

    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _sse_event({"type": f"response.{kind}", "sequence_number": next(sequence), **fields})

    in_progress = final(status="in_progress", output=[], usage=None)
    message_index = len(output) - 1
    head = [event("created", response=in_progress), event("in_progress", response=in_progress)]
    if reasoning_item:
        head += [
            event("output_item.added", output_index=0, item=reasoning_item),
            event("output_item.done", output_index=0, item=reasoning_item),
        ]
    where = {"item_id": message_id, "output_index": message_index}
    head += [
        event(
            "output_item.added",
            output_index=message_index,
            item={**message, "status": "in_progress", "content": []},
        ),
        event("content_part.added", **where, content_index=0, part={**text_part, "text": ""}),
    ]
    content = [
        event("output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
        for piece in reply.pieces
    ]
    tail = [
        event("output_text.done", **where, content_index=0, text=reply.text, logprobs=[]),
        event("content_part.done", **where, content_index=0, part=text_part),
        event("output_item.done", output_index=message_index, item=message),
        event(status, response=finished),
    ]
    if remember:
        # Stored as in progress until the terminal event is written, as OpenAI shows a stream.
        state.remember(in_progress)
    return await _stream(
        request,
        knobs,
        head,
        content,
        tail,
        on_complete=(lambda: state.remember(finished)) if remember else None,
    )


async def get_response(request: web.Request) -> web.Response:
    stored = request.app[STATE].responses.get(request.match_info["response_id"])
    if stored is None:
        raise OpenAIError(
            404,
            f"Response with id '{request.match_info['response_id']}' not found.",
            param="response_id",
        )
    return _json(stored)


async def moderations(request: web.Request) -> web.Response:
    body = _json_body(request)
    knobs: Knobs = request[_KNOBS]
    model = body.get("model") or "omni-moderation-latest"
    value = body.get("input")
    if isinstance(value, str):
        count = 1
    elif isinstance(value, list) and value:
        # A list of strings is one result each; a list of multimodal parts is one input.
        count = len(value) if all(isinstance(v, str) for v in value) else 1
    else:
        raise OpenAIError(400, "'input' is a required property", param="input")
    result = {
        "flagged": False,
        "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 1e-06),
        "category_applied_input_types": {
            name: ["text", "image"] if name in _IMAGE_CATEGORIES else ["text"]
            for name in MODERATION_CATEGORIES
        },
    }
    return _json(
        {
            "id": _ident("modr-", 32),
            "model": _answer_model(knobs, model),
            "results": [result] * count,
        }
    )


def _model_object(entry: tuple[str, int, str]) -> dict[str, Any]:
    model_id, created, owned_by = entry
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


async def list_models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [_model_object(entry) for entry in MODELS]})


async def retrieve_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    for entry in MODELS:
        if entry[0] == model_id:
            return _json(_model_object(entry))
    raise OpenAIError(
        404,
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


# --- control endpoints -----------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json(
        {
            "requests": state.requests,
            "open_streams": state.open_streams,
            "open_connections": len(state.web_server.connections) if state.web_server else None,
            "last_request": state.last_request,
            "by_path": dict(state.by_path),
            "stored_responses": len(state.responses),
        }
    )


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.requests = 0
    state.by_path.clear()
    state.last_request = None
    state.responses.clear()
    return _json({"ok": True})


# --- wiring ----------------------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _redacted(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


@web.middleware
async def openai_gateway(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bookkeeping, routing errors, auth and the request-wide knobs, before any handler."""
    request[_STARTED] = time.perf_counter()
    if request.path.startswith("/_fake/"):
        return await handler(request)
    state = request.app[STATE]
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    request[_BODY] = body
    state.requests += 1
    state.by_path[request.path] += 1
    state.last_request = {
        "method": request.method,
        "path": request.path,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": body,
    }
    try:
        if request.match_info.http_exception is not None:
            # OpenAI answers a wrong method on a known path as an unknown URL too.
            raise OpenAIError(
                404, f"Invalid URL ({request.method} {request.path})", code="unknown_url"
            )
        key = _bearer(request)
        if key is None:
            raise OpenAIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if not secrets.compare_digest(key.encode(), state.key.encode()):
            raise OpenAIError(
                401,
                f"Incorrect API key provided: {_redacted(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        knobs = Knobs.from_body(body)
        request[_KNOBS] = knobs
        await _sleep_ms(state.latency_ms if knobs.latency_ms is None else knobs.latency_ms)
        if knobs.fail_status is not None:
            raise _requested_failure(knobs)
        return await handler(request)
    except OpenAIError as error:
        return error.response()


def _requested_failure(knobs: Knobs) -> OpenAIError:
    status = knobs.fail_status or 500
    type_, code, message = _FAILURES.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Fake failure {status}.",
        ),
    )
    headers = {}
    if knobs.retry_after is not None:
        headers["retry-after"] = knobs.retry_after
    if knobs.retry_after_ms is not None:
        headers["retry-after-ms"] = knobs.retry_after_ms
    if knobs.should_retry is not None:
        headers["x-should-retry"] = "true" if knobs.should_retry else "false"
    return OpenAIError(
        status,
        knobs.fail_message or message,
        type_=knobs.fail_type or type_,
        code=knobs.fail_code if knobs.fail_code is not None else code,
        headers=headers,
    )


async def _openai_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Sent on every response, streams included, just before the headers go out."""
    started = request.get(_STARTED)
    elapsed_ms = int((time.perf_counter() - started) * 1000) if started is not None else 0
    headers = response.headers
    headers.setdefault("x-request-id", _ident("req_", 32))
    headers.setdefault("openai-processing-ms", str(elapsed_ms))
    headers.setdefault("openai-version", "2020-10-01")
    headers.setdefault("openai-organization", "fake-org")
    headers.setdefault("openai-project", "proj_fake")
    headers.setdefault("x-ratelimit-limit-requests", "10000")


def _default_encodings_dir() -> Path:
    from django.conf import settings

    if settings.configured:
        return Path(settings.TIKTOKEN_CACHE_DIR)
    return Path(tempfile.gettempdir()) / "fake-openai-tiktoken"


def create_app(
    *,
    key: str | None = None,
    latency_ms: float = 0.0,
    encodings_dir: str | Path | None = None,
) -> web.Application:
    """The fake upstream. Without `encodings_dir` it uses Django's TIKTOKEN_CACHE_DIR when
    settings are configured, else a folder in the system temp dir."""
    tokens.install_encodings(encodings_dir or _default_encodings_dir())
    app = web.Application(middlewares=[openai_gateway], client_max_size=64 * 1024**2)
    app[STATE] = FakeState(
        key=key or os.environ.get("FAKE_OPENAI_KEY") or DEFAULT_KEY, latency_ms=latency_ms
    )
    app.on_response_prepare.append(_openai_headers)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_post("/v1/moderations", moderations)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", retrieve_model)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    return app


async def start_server(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0, access_log: bool = False
) -> web.AppRunner:
    """Serve `app`; port 0 picks a free one (read it from `runner.addresses`)."""
    runner = web.AppRunner(
        app,
        # Cancel a handler as soon as its client hangs up, so open_streams drops at once
        # rather than at the next write.
        handler_cancellation=True,
        # No per-request log line by default: the fake sits under a latency benchmark.
        access_log=access_logger if access_log else None,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    app[STATE].web_server = runner.server
    return runner


class FakeOpenAIThread:
    """The fake served from a background thread, for tests: `with FakeOpenAIThread() as fake:`
    then point OPENAI_BASE_URL at `fake.base_url`."""

    def __init__(
        self,
        *,
        key: str | None = None,
        latency_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        encodings_dir: str | Path | None = None,
    ) -> None:
        self.app = create_app(key=key, latency_ms=latency_ms, encodings_dir=encodings_dir)
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)

    @property
    def state(self) -> FakeState:
        return self.app[STATE]

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        try:
            runner = await start_server(self.app, host=self.host, port=self.port)
        except BaseException as error:  # noqa: BLE001 (handed to the starting thread, which re-raises)
            self._error = error
            self._ready.set()
            return
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def start(self) -> FakeOpenAIThread:
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAIThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
