"""The `fake` object a request may carry in its JSON body, to steer the fake upstream.

The proxy relays bodies untouched, so a test steers "OpenAI" through the proxy:

- timing: `latency_ms` (alias `headers_delay_ms`: the wait before the response headers go
  out; a client that leaves during it is billed `client_gone` for its prompt only),
  `chunk_delay_ms` (between stream frames), `stall_after` + `stall_ms` (stall a stream after
  that many content frames, for `stall_ms` or, without it, until the client leaves);
- the answer: `completion_tokens` (output tokens to write, capped by the request's max:
  ask for at least the max to get a reply exactly that long), `chunks`, `cached_tokens`,
  `reasoning_tokens`, `service_tier`, `response_model`, `terminal` (Responses: completed /
  incomplete / failed);
- what the fake cannot see for itself: `image_size` ("WxH", an image behind an https URL,
  which the fake does not fetch), `audio_input_tokens` (instead of the count from the audio
  sent), `audio_output_tokens` (the spoken part of an audio reply, still capped by the max);
- built-in tools on Responses (`fakeopenai.tool_calls`): `tool_calls` (how many calls,
  default 1), `tool_type` (which declared tool), `tool_content_tokens` (what one call brings
  into the context);
- usage that disagrees with the text: `usage_prompt_tokens`, `usage_completion_tokens` (what
  usage reports and the bill charges, whatever was counted or written), `no_usage`;
- failures: `fail_status` (+ `fail_type`, `fail_code`, `fail_message`, `retry_after`,
  `retry_after_ms`, `should_retry`), and broken streams: `cut_after` (drop the connection
  after N content frames), `end_early_after` (end the body cleanly after N, with no tail).

A wrong type is a 400 in OpenAI's shape, so a typo in a test fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fakeopenai.errors import OpenAIError

# The Responses tools OpenAI runs itself; a call to one is another turn of the model.
BUILT_IN_TOOLS = (
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "image_generation",
)
_IMAGE_SIZE = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")

_FLOATS = ("latency_ms", "chunk_delay_ms", "stall_ms")
_INTS = (
    "chunks",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "fail_status",
    "cut_after",
    "end_early_after",
)
# Newer knobs refuse negatives: a negative count or wait would make a bill that means nothing.
_COUNTS = (
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "stall_after",
    "audio_input_tokens",
    "audio_output_tokens",
    "tool_calls",
    "tool_content_tokens",
)
_STRINGS = (
    "service_tier",
    "response_model",
    "fail_type",
    "fail_code",
    "fail_message",
    "retry_after",
    "retry_after_ms",
)


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
    stall_after: int | None = None
    stall_ms: float | None = None  # None: stall until the client leaves
    no_usage: bool = False
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    terminal: str = "completed"
    image_size: tuple[int, int] | None = None
    audio_input_tokens: int | None = None
    audio_output_tokens: int | None = None
    tool_calls: int | None = None
    tool_type: str | None = None
    tool_content_tokens: int | None = None

    @classmethod
    def from_body(cls, body: object) -> Knobs:
        raw = body.get("fake") if isinstance(body, dict) else None
        if raw is None:
            return NO_KNOBS
        if not isinstance(raw, dict):
            raise OpenAIError(400, "fake must be an object.", param="fake")
        raw = dict(raw)
        if raw.get("headers_delay_ms") is not None:
            if raw.get("latency_ms") is not None:
                raise OpenAIError(
                    400,
                    "fake.headers_delay_ms is another name for fake.latency_ms: give one.",
                    param="fake.headers_delay_ms",
                )
            raw["latency_ms"] = raw["headers_delay_ms"]
        values: dict[str, Any] = {}
        for name in _FLOATS:
            if raw.get(name) is not None:
                values[name] = _number(raw, name, float)
        for name in _INTS:
            if raw.get(name) is not None:
                values[name] = _number(raw, name, int)
        for name in _COUNTS:
            if raw.get(name) is not None:
                values[name] = _count(raw, name)
        for name in _STRINGS:
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
        if raw.get("image_size") is not None:
            values["image_size"] = _image_size(raw["image_size"])
        if raw.get("tool_type") is not None:
            if raw["tool_type"] not in BUILT_IN_TOOLS:
                raise OpenAIError(
                    400,
                    f"fake.tool_type must be one of {', '.join(BUILT_IN_TOOLS)}.",
                    param="fake.tool_type",
                )
            values["tool_type"] = raw["tool_type"]
        return cls(**values)

    def reported_prompt(self, counted: int) -> int:
        """The input tokens usage reports and the bill charges."""
        return counted if self.usage_prompt_tokens is None else self.usage_prompt_tokens

    def reported_output(self, counted: int) -> int:
        """The output tokens usage reports and the bill charges for a whole answer."""
        return counted if self.usage_completion_tokens is None else self.usage_completion_tokens


NO_KNOBS = Knobs()


def _number(raw: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpenAIError(400, f"fake.{name} must be a number.", param=f"fake.{name}")
    return kind(value)


def _count(raw: dict[str, Any], name: str) -> int:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpenAIError(
            400, f"fake.{name} must be a whole number, 0 or more.", param=f"fake.{name}"
        )
    return value


def _image_size(value: object) -> tuple[int, int]:
    match = _IMAGE_SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise OpenAIError(
            400, 'fake.image_size must be "WIDTHxHEIGHT", e.g. "1024x768".', param="fake.image_size"
        )
    return int(match[1]), int(match[2])
