"""POST /v1/chat/completions and the legacy POST /v1/completions, plain and streamed."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from fakeopenai.catalog import answer_model
from fakeopenai.content import Reply, make_reply
from fakeopenai.counting import count_chat_prompt, count_input
from fakeopenai.errors import OpenAIError
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import (
    KNOBS,
    SYSTEM_FINGERPRINT,
    TAB,
    completion_usage,
    ident,
    include_usage,
    json_body,
    json_response,
    required_model,
    service_tier,
    sse_data,
)
from fakeopenai.streaming import write_stream


def _charge(
    request: web.Request, counted_prompt: int, reply: Reply, knobs: Knobs
) -> dict[str, Any]:
    """Put the answer on the request's tab; the usage block it reports."""
    prompt = knobs.reported_prompt(counted_prompt)
    output = knobs.reported_output(reply.completion_tokens)
    request[TAB].charge(prompt=prompt, output=output, progress=reply.tokens_of_first)
    return completion_usage(prompt, output, reply, knobs)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = json_body(request)
    model = required_model(body)
    if not isinstance(body.get("messages"), list):
        raise OpenAIError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    knobs = request[KNOBS]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    reply = make_reply(model, knobs, limit)
    usage = _charge(request, count_chat_prompt(body["messages"], model), reply, knobs)
    finish_reason = "length" if reply.truncated else "stop"
    base = {
        "id": ident("chatcmpl-", 30),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer_model(knobs, model),
        "service_tier": service_tier(knobs, body),
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
            request[TAB].usage_reported = True
        return json_response(result)

    base["object"] = "chat.completion.chunk"
    with_usage = include_usage(body)
    if with_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_data(
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
    usage_at = None
    if with_usage and not knobs.no_usage:
        usage_at = len(tail)
        tail.append(sse_data({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    return await write_stream(
        request, knobs, head=head, content=content, tail=tail, usage_at=usage_at
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = json_body(request)
    model = required_model(body)
    knobs = request[KNOBS]
    reply = make_reply(model, knobs, body.get("max_tokens"))
    usage = _charge(request, count_input(body.get("prompt"), model), reply, knobs)
    finish_reason = "length" if reply.truncated else "stop"
    base = {
        "id": ident("cmpl-", 30),
        "object": "text_completion",
        "created": int(time.time()),
        "model": answer_model(knobs, model),
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
            request[TAB].usage_reported = True
        return json_response(result)

    with_usage = include_usage(body)
    if with_usage:
        base["usage"] = None

    def chunk(text: str, finish: str | None = None) -> bytes:
        return sse_data(
            {
                **base,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
        )

    content = [chunk(piece) for piece in reply.pieces]
    tail = [chunk("", finish_reason)]
    usage_at = None
    if with_usage and not knobs.no_usage:
        usage_at = len(tail)
        tail.append(sse_data({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    return await write_stream(
        request, knobs, head=[], content=content, tail=tail, usage_at=usage_at
    )
