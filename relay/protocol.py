"""What the relay reads in OpenAI's responses: usage blocks, SSE events, streamed text.

Parsing is defensive: a missing or odd field means 0 tokens, never an exception, because a
response we fail to understand must still be relayed and recorded.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.metering import BuiltinTools
from usage.pricing import TokenUsage


def _int(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _usage(usage: object, *, inp: str, out: str) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    in_details = _dict(usage.get(f"{inp}_details"))
    out_details = _dict(usage.get(f"{out}_details"))
    return TokenUsage(
        prompt=_int(usage.get(inp)),
        cached=_int(in_details.get("cached_tokens")),
        cache_write=_int(in_details.get("cache_write_tokens")),
        audio_input=_int(in_details.get("audio_tokens")),
        completion=_int(usage.get(out)),
        reasoning=_int(out_details.get("reasoning_tokens")),
        audio_output=_int(out_details.get("audio_tokens")),
    )


def chat_usage(usage: object) -> TokenUsage | None:
    """Chat, legacy completions and embeddings usage (`prompt_tokens` style)."""
    return _usage(usage, inp="prompt_tokens", out="completion_tokens")


def responses_usage(usage: object) -> TokenUsage | None:
    """Responses API usage (`input_tokens` style)."""
    return _usage(usage, inp="input_tokens", out="output_tokens")


def responses_tool_calls(output: object, tools: BuiltinTools) -> dict[str, int]:
    """The built-in tool calls a Responses answer made, by fee key (see metering): web and
    file searches per call, a code interpreter container per distinct container, an image
    per image generation call at its quality and size (`*`, the dearest, where neither the
    call nor the request says)."""
    calls: dict[str, int] = {}
    containers: set[str] = set()
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "web_search_call" and item.get("status") != "failed":
            key = tools.search or "web_search"
            calls[key] = calls.get(key, 0) + 1
        elif kind == "file_search_call" and item.get("status") != "failed":
            calls["file_search"] = calls.get("file_search", 0) + 1
        elif kind == "code_interpreter_call":
            containers.add(str(item.get("container_id") or ""))
        elif kind == "image_generation_call" and item.get("status") != "failed":
            quality = item.get("quality")
            size = item.get("size")
            quality = quality if quality in ("low", "medium", "high") else tools.image_quality
            size = size if isinstance(size, str) and "x" in size else tools.image_size
            key = f"image_generation:{tools.image_model or 'gpt-image-1'}:{quality}:{size}"
            calls[key] = calls.get(key, 0) + 1
    if containers:
        calls[f"code_interpreter:{tools.container_memory or '1g'}"] = len(containers)
    return calls


_SERVER_CALLS = (
    "web_search_call",
    "file_search_call",
    "code_interpreter_call",
    "image_generation_call",
    "mcp_call",
)


def server_tool_calls(output: object) -> int:
    """How many server-side tool calls an answer's output items show."""
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output if isinstance(item, dict) and item.get("type") in _SERVER_CALLS)


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class SSEBuffer:
    """Cuts a byte stream into whole SSE events (each ending with its blank line)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk
        events = []
        while True:
            cut = data.find(b"\n\n")
            cut_crlf = data.find(b"\r\n\r\n")
            if cut_crlf != -1 and (cut == -1 or cut_crlf < cut):
                end = cut_crlf + 4
            elif cut != -1:
                end = cut + 2
            else:
                break
            events.append(data[:end])
            data = data[end:]
        self._pending = data
        return events

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def event_fields(event: bytes) -> tuple[str, bytes]:
    """(event name, data) of one SSE event; multi-line data joined by newlines."""
    name = ""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data)


_HELD_BYTES = 32 * 1024


class StreamState:
    """What one relayed stream has shown so far: usage, model, ids and the text produced."""

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self.response_model = ""
        self.service_tier = ""
        self.response_id = ""
        self.finished = False
        # Responses: the output items (the terminal event's, else the tool calls seen done).
        self.output: list[Any] = []
        self.partial_images = 0
        # The text-bearing events, raw: parsed only if the text is ever needed (a cut stream,
        # a stored body). Past _HELD_BYTES they are parsed into their text and dropped, so a
        # long stream holds its text, not a copy of every chunk.
        self._datas: list[bytes] = []
        self._held = 0
        self._texts: list[str] = []

    def _keep(self, data: bytes) -> None:
        self._datas.append(data)
        self._held += len(data)
        if self._held > _HELD_BYTES:
            self._texts.append(self._text_of(self._datas))
            self._datas = []
            self._held = 0

    def text(self) -> str:
        """The text generated so far (what a cut stream's output is counted from)."""
        return "".join(self._texts) + self._text_of(self._datas)

    def _text_of(self, datas: list[bytes]) -> str:
        raise NotImplementedError


class ChatStream(StreamState):
    """`chat/completions` and `completions` streams: `data: {chunk}` lines, then `[DONE]`."""

    def __init__(self, *, client_wants_usage: bool) -> None:
        super().__init__()
        self.client_wants_usage = client_wants_usage

    def on_event(self, event: bytes) -> bytes | None:
        """Return the event to pass on, or None to withhold it."""
        _, data = event_fields(event)
        if not data:
            return event
        if data.strip() == b"[DONE]":
            self.finished = True
            return event
        if not self.response_model or (b'"usage"' in data and b'"usage":null' not in data):
            chunk = loads(data)
            if isinstance(chunk, dict):
                self.response_model = self.response_model or str(chunk.get("model") or "")
                self.service_tier = self.service_tier or str(chunk.get("service_tier") or "")
                usage = chat_usage(chunk.get("usage"))
                if usage is not None:
                    self.usage = usage
                    if chunk.get("choices") == [] and not self.client_wants_usage:
                        # The usage-only chunk: some clients index choices[0] and break on it.
                        return None
        self._keep(data)
        return event

    def _text_of(self, datas: list[bytes]) -> str:
        parts: list[str] = []
        for data in datas:
            chunk = loads(data)
            if not isinstance(chunk, dict):
                continue
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                if isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
                delta = _dict(choice.get("delta"))
                for field in ("content", "refusal", "reasoning_content"):
                    if isinstance(delta.get(field), str):
                        parts.append(delta[field])
                for call in delta.get("tool_calls") or ():
                    function = _dict(_dict(call).get("function"))
                    for field in ("name", "arguments"):
                        if isinstance(function.get(field), str):
                            parts.append(function[field])
        return "".join(parts)


RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_TEXT_DELTAS = (
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
)


class ResponsesStream(StreamState):
    """Responses API streams: named events; usage is in the terminal event's `response`."""

    def on_event(self, event: bytes) -> bytes | None:
        name, data = event_fields(event)
        if not data:
            return event
        if name in _TEXT_DELTAS or (not name and b'"delta"' in data and b"_text.delta" in data):
            self._keep(data)
            return event
        if name == "response.image_generation_call.partial_image":
            self.partial_images += 1
            return event
        if name == "response.output_item.done" and b'_call"' in data:
            # A built-in tool call is billed per call, even if the stream is cut later.
            item = _dict(_dict(loads(data)).get("item"))
            if item:
                self.output.append(item)
            return event
        if name.startswith(("response.output_", "response.content_part")):
            return event  # nothing the meter needs, and the bulk of the events
        payload = loads(data)
        if not isinstance(payload, dict):
            return event
        kind = name or str(payload.get("type") or "")
        response = _dict(payload.get("response"))
        if response:
            self.response_id = self.response_id or str(response.get("id") or "")
            self.response_model = str(response.get("model") or self.response_model)
            self.service_tier = str(response.get("service_tier") or self.service_tier)
        if kind in RESPONSES_TERMINAL:
            self.usage = responses_usage(response.get("usage"))
            if isinstance(response.get("output"), list):
                self.output = response["output"]
            self.finished = True
        return event

    def _text_of(self, datas: list[bytes]) -> str:
        deltas = (loads(data) for data in datas)
        return "".join(
            d["delta"] for d in deltas if isinstance(d, dict) and isinstance(d.get("delta"), str)
        )


def response_summary(model: str, text: str, usage: TokenUsage | None) -> str:
    """What is stored as a streamed response's body: the assembled text, not raw chunks."""
    body: dict[str, Any] = {"model": model, "output_text": text}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion}
    return orjson.dumps(body).decode()
