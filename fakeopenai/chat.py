"""POST /v1/chat/completions and the legacy POST /v1/completions, plain and streamed.

What the fake assumes OpenAI bills for a chat prompt: its messages (`fakeopenai.counting`),
with their images, audio and files (`fakeopenai.parts`), and its tool and schema definitions
(`fakeopenai.tools`); for the reply see `fakeopenai.content` and, spoken, `fakeopenai.audio`.
"""

from __future__ import annotations

import base64
import itertools
import math
import time
from typing import Any

from aiohttp import web

from fakeopenai.audio import spoken_audio
from fakeopenai.catalog import answer_model
from fakeopenai.content import Reply, make_reply
from fakeopenai.counting import count_chat_prompt, count_input
from fakeopenai.errors import OpenAIError
from fakeopenai.knobs import Knobs
from fakeopenai.parts import PartCounter
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
from fakeopenai.tools import definition_tokens

# How long OpenAI keeps a spoken reply for a later turn to refer to.
AUDIO_KEPT_SECONDS = 3600


def _charge(
    request: web.Request, counted_prompt: int, reply: Reply, knobs: Knobs, *, audio_input: int = 0
) -> dict[str, Any]:
    """Put the answer on the request's tab; the usage block it reports."""
    prompt = knobs.reported_prompt(counted_prompt)
    output = knobs.reported_output(reply.completion_tokens)
    audio_input = min(audio_input, prompt)
    request[TAB].charge(
        prompt=prompt,
        output=output,
        progress=reply.tokens_of_first,
        audio_input=audio_input,
        audio_output=min(reply.audio_tokens, output),
        audio_progress=reply.audio_of_first,
    )
    return completion_usage(prompt, output, reply, knobs, audio_input=audio_input)


def _limit(body: dict[str, Any]) -> object:
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


def _spoken(body: dict[str, Any]) -> bool:
    modalities = body.get("modalities")
    if not (isinstance(modalities, list) and "audio" in modalities):
        return False
    if not isinstance(body.get("audio"), dict):
        raise OpenAIError(
            400,
            "Missing required parameter: 'audio'.",
            param="audio",
            code="missing_required_parameter",
        )
    return True


def _base64_pieces(data: str, count: int) -> list[str]:
    """`data` in `count` consecutive pieces, each cut on a 4-character boundary so each
    decodes on its own."""
    quads = math.ceil(len(data) / 4)
    bounds = [4 * (quads * i // count) for i in range(count + 1)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


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
    spoken = _spoken(body)
    parts = PartCounter(model, knobs)
    counted = count_chat_prompt(body["messages"], model, parts) + definition_tokens(body, model)
    reply = make_reply(model, knobs, _limit(body), spoken=spoken)
    usage = _charge(
        request, parts.with_audio_knob(counted), reply, knobs, audio_input=parts.audio_tokens
    )
    finish_reason = "length" if reply.truncated else "stop"
    created = int(time.time())
    base = {
        "id": ident("chatcmpl-", 30),
        "object": "chat.completion",
        "created": created,
        "model": answer_model(knobs, model),
        "service_tier": service_tier(knobs, body),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    audio = None
    if spoken:
        audio = {
            "id": ident("audio_", 32),
            "data": base64.b64encode(spoken_audio(body["audio"].get("format"))).decode(),
            "expires_at": created + AUDIO_KEPT_SECONDS,
            "transcript": reply.text,
        }
    if not body.get("stream"):
        message: dict[str, Any] = {
            "role": "assistant",
            # A spoken reply's words are its audio's transcript.
            "content": None if audio else reply.text,
            "refusal": None,
            "annotations": [],
        }
        if audio:
            message["audio"] = audio
        result = {
            **base,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
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

    head = [chunk({"role": "assistant", "content": None if audio else "", "refusal": None})]
    tail = []
    if audio:
        # Each delta carries its words and their share of the audio; the last audio update
        # only the expiry.
        data = _base64_pieces(audio["data"], max(1, len(reply.pieces)))
        content = [
            chunk({"audio": {"id": audio["id"], "transcript": piece, "data": data[i]}})
            for i, piece in enumerate(reply.pieces)
        ]
        if not content:
            tail.append(chunk({"audio": {"id": audio["id"], "transcript": "", "data": data[0]}}))
        tail.append(chunk({"audio": {"expires_at": audio["expires_at"]}}))
    else:
        content = [chunk({"content": piece}) for piece in reply.pieces]
    tail.append(chunk({}, finish_reason))
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
