"""The Responses API: POST /v1/responses (plain and streamed) and GET /v1/responses/{id}.

What the fake assumes OpenAI bills for a response's input: its `input` (`fakeopenai.counting`,
with images, audio and files by `fakeopenai.parts`), its `instructions`, its function tools
and `text.format` schema (`fakeopenai.tools`), and, continuing a stored response
(`previous_response_id`), that response's billed input and output again: the whole chain is
history the model reads. All of it is read again by each built-in tool call
(`fakeopenai.tool_calls`). An unknown or unstored previous response is refused as OpenAI
refuses it: 400, code previous_response_not_found.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any

from aiohttp import web

from fakeopenai.catalog import answer_model
from fakeopenai.content import make_reply
from fakeopenai.counting import count_input, count_text
from fakeopenai.errors import OpenAIError
from fakeopenai.parts import PartCounter
from fakeopenai.protocol import (
    KNOBS,
    TAB,
    ident,
    json_body,
    json_response,
    required_model,
    service_tier,
    sse_event,
)
from fakeopenai.state import STATE, FakeState
from fakeopenai.streaming import write_stream
from fakeopenai.tool_calls import added_item, call_items, plan_tool_calls, progress_events
from fakeopenai.tools import definition_tokens

# OpenAI answers an unknown previous_response_id with 400, not 404 (its error code says
# not_found); the proxy answers 404 itself for a response another user made.
PREVIOUS_NOT_FOUND_STATUS = 400


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


def _history_tokens(body: dict[str, Any], state: FakeState) -> int:
    """What continuing a stored response re-bills: the input and output it billed (its own
    history included, so a chain is billed whole)."""
    previous_id = body.get("previous_response_id")
    if previous_id is None:
        return 0
    stored = state.responses.get(previous_id) if isinstance(previous_id, str) else None
    if stored is None:
        raise OpenAIError(
            PREVIOUS_NOT_FOUND_STATUS,
            f"Previous response with id '{previous_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored.input_tokens + stored.output_tokens


async def create_response(request: web.Request) -> web.StreamResponse:
    body = json_body(request)
    model = required_model(body)
    knobs = request[KNOBS]
    state = request.app[STATE]
    history = _history_tokens(body, state)
    plan = plan_tool_calls(body, knobs)
    parts = PartCounter(model, knobs)
    own = count_input(body.get("input"), model, parts) + definition_tokens(body, model)
    if isinstance(body.get("instructions"), str):
        own += count_text(body["instructions"], model)
    reply = make_reply(model, knobs, body.get("max_output_tokens"))
    prompt = knobs.reported_prompt(plan.input_tokens(history + parts.with_audio_knob(own)))
    output = knobs.reported_output(reply.completion_tokens)
    request[TAB].charge(
        prompt=prompt,
        output=output,
        progress=reply.tokens_of_first,
        audio_input=min(parts.audio_tokens, prompt),
        tool_calls=plan.billed(),
    )
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
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
            "total_tokens": prompt + output,
        }
    response_id = ident("resp_", 48)
    message_id = ident("msg_", 48)
    text_part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
    message = {
        "type": "message",
        "id": message_id,
        "status": "incomplete" if status == "incomplete" else "completed",
        "role": "assistant",
        "content": [text_part],
    }
    # Reasoning models list a reasoning item first; its tokens are hidden. Built-in tool
    # calls come next, each a turn of the model before the one that wrote the message.
    before: list[dict[str, Any]] = []
    if reply.reasoning_tokens:
        before.append({"type": "reasoning", "id": ident("rs_", 48), "summary": []})
    before += call_items(plan, body)
    output_items = [*before, message]
    final = functools.partial(
        _response_object,
        body,
        response_id=response_id,
        created_at=int(time.time()),
        model=answer_model(knobs, model),
        service_tier=service_tier(knobs, body),
    )
    finished = final(status=status, output=output_items, usage=usage)
    remember = body.get("store", True) is not False
    if not body.get("stream"):
        if remember:
            state.remember(finished, input_tokens=prompt, output_tokens=output)
        request[TAB].usage_reported = usage is not None
        return json_response(finished)

    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event({"type": f"response.{kind}", "sequence_number": next(sequence), **fields})

    in_progress = final(status="in_progress", output=[], usage=None)
    message_index = len(output_items) - 1
    head = [event("created", response=in_progress), event("in_progress", response=in_progress)]
    for index, item in enumerate(before):
        if item["type"] == "reasoning":
            head.append(event("output_item.added", output_index=index, item=item))
        else:
            head.append(event("output_item.added", output_index=index, item=added_item(item)))
            head += [
                event(kind, output_index=index, item_id=item["id"], **fields)
                for kind, fields in progress_events(item)
            ]
        head.append(event("output_item.done", output_index=index, item=item))
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
        # Stored as in progress until the terminal event is written, as OpenAI shows a stream;
        # continued before then, its history is its input alone.
        state.remember(in_progress, input_tokens=prompt, output_tokens=0)
    return await write_stream(
        request,
        knobs,
        head=head,
        content=content,
        tail=tail,
        # The terminal event carries the usage.
        usage_at=len(tail) - 1 if usage is not None else None,
        on_complete=(
            (lambda: state.remember(finished, input_tokens=prompt, output_tokens=output))
            if remember
            else None
        ),
    )


async def get_response(request: web.Request) -> web.Response:
    stored = request.app[STATE].responses.get(request.match_info["response_id"])
    if stored is None:
        raise OpenAIError(
            404,
            f"Response with id '{request.match_info['response_id']}' not found.",
            param="response_id",
        )
    return json_response(stored.response)
