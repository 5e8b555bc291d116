"""The parts of OpenAI's wire protocol every endpoint family shares: ids, bodies, usage
blocks, SSE framing, the wait before headers, and what the gateway leaves on a request."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
from aiohttp import web

from fakeopenai.content import Reply
from fakeopenai.errors import OpenAIError
from fakeopenai.knobs import Knobs
from fakeopenai.state import STATE, Tab

SYSTEM_FINGERPRINT = "fp_0fa4e0c1d2"

# Set by the gateway (fakeopenai.app) before any /v1 handler runs.
STARTED = web.RequestKey("fake_openai_started", float)
REQUEST_ID = web.RequestKey("fake_openai_request_id", str)
BODY = web.RequestKey("fake_openai_body", object)
KNOBS = web.RequestKey("fake_openai_knobs", Knobs)
TAB = web.RequestKey("fake_openai_tab", Tab)


def ident(prefix: str, hex_chars: int) -> str:
    return prefix + secrets.token_hex(hex_chars // 2)


def service_tier(knobs: Knobs, body: dict[str, Any]) -> str:
    if knobs.service_tier:
        return knobs.service_tier
    requested = body.get("service_tier")
    # "auto" resolves to the tier actually used: "default" for a project with no Scale Tier.
    return requested if isinstance(requested, str) and requested != "auto" else "default"


def json_body(request: web.Request) -> dict[str, Any]:
    body = request[BODY]
    if not isinstance(body, dict):
        raise OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but "
            "what was sent was not valid JSON.)",
        )
    return body


def required_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter")
    return model


def json_response(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def completion_usage(
    prompt: int, output: int, reply: Reply, knobs: Knobs, *, audio_input: int = 0
) -> dict[str, Any]:
    """Chat and legacy completions usage; `prompt` and `output` as the knobs report them, the
    audio inside them."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {
            "cached_tokens": min(max(0, knobs.cached_tokens), prompt),
            "audio_tokens": audio_input,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": min(reply.audio_tokens, output),
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def sse_data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


async def sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def wait_before_headers(request: web.Request) -> None:
    """`fake.latency_ms` (alias `headers_delay_ms`), else the server's --latency-ms.

    It runs once the answer is built and its prompt charged, so a client that leaves during
    it (served by `start_server`, aiohttp cancels the handler) is billed for its input."""
    knobs = request.get(KNOBS)
    if knobs is None:
        return  # refused before the knobs were read (auth, bad knobs): answered at once
    state = request.app[STATE]
    await sleep_ms(state.latency_ms if knobs.latency_ms is None else knobs.latency_ms)
