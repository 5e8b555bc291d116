"""What the fake saw and what it billed: read by tests through /_fake/stats and /_fake/bills.

What the fake assumes OpenAI bills when a request ends badly: a refused request nothing; a
client gone before the headers its input only (with its audio and tool calls, which ran
before any output); a stream cut, ended early or left its input and the output that went out
(the audio with the words it came with); a stored response is re-billed, input and output,
as the history of a response that continues it (`fakeopenai.responses`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

# Bounded so a benchmark of a million calls cannot grow the process without end.
MAX_STORED_RESPONSES = 10_000
MAX_BILLS = 100_000

Outcome = Literal["completed", "cut", "ended_early", "client_gone", "error"]


@dataclass
class Tab:
    """One request's bill while it runs. The handler says what the answer costs, the stream
    writer how far it got, and the gateway closes it exactly once, whatever happened."""

    request_id: str
    path: str
    model: str | None = None
    stream: bool = False
    status: int | None = None  # the status sent; None while no headers have gone out
    prompt_tokens: int = 0
    output_tokens: int = 0  # the whole answer's output, as usage reports it
    # A stream's output once n content frames were written (the reasoning comes first).
    progress: Callable[[int], int] | None = None
    content_frames: int = 0
    outcome: Outcome | None = None
    usage_reported: bool = False
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0  # the whole answer's, as usage reports it
    audio_progress: Callable[[int], int] | None = None
    tool_calls: dict[str, int] = field(default_factory=dict)  # by built-in tool type

    def charge(
        self,
        *,
        prompt: int,
        output: int = 0,
        progress: Callable[[int], int] | None = None,
        audio_input: int = 0,
        audio_output: int = 0,
        audio_progress: Callable[[int], int] | None = None,
        tool_calls: dict[str, int] | None = None,
    ) -> None:
        self.prompt_tokens, self.output_tokens, self.progress = prompt, output, progress
        self.audio_input_tokens, self.audio_output_tokens = audio_input, audio_output
        self.audio_progress = audio_progress
        self.tool_calls = dict(tool_calls or {})

    def bill(self) -> dict[str, Any]:
        outcome = self.outcome or "error"
        prompt, audio_input = self.prompt_tokens, self.audio_input_tokens
        tool_calls = self.tool_calls
        if outcome == "error":
            # A request OpenAI refuses costs nothing, whatever was counted before it failed.
            prompt = completion = audio_input = audio_output = 0
            tool_calls = {}
        elif outcome == "completed":
            completion, audio_output = self.output_tokens, self.audio_output_tokens
        elif self.status is None:
            # Gone before the headers: the input was processed (and is billed), no output was.
            completion = audio_output = 0
        else:
            # Generation stops where the stream did: what went out is what is billed.
            frames = self.content_frames
            completion = self.progress(frames) if self.progress else 0
            audio_output = self.audio_progress(frames) if self.audio_progress else 0
        return {
            "request_id": self.request_id,
            "path": self.path,
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "outcome": outcome,
            # A plain answer carries its usage, but only an answer that went out reported it.
            "usage_reported": self.usage_reported
            and self.status is not None
            and outcome != "error",
            # Already inside prompt_tokens / completion_tokens, as in OpenAI's usage.
            "audio_input_tokens": audio_input,
            "audio_output_tokens": audio_output,
            "tool_calls": dict(tool_calls),
        }


_TOTALLED = ("prompt_tokens", "completion_tokens", "audio_input_tokens", "audio_output_tokens")


def _no_bills() -> dict[str, Any]:
    return {"requests": 0, **dict.fromkeys(_TOTALLED, 0), "tool_calls": {}}


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for GET /v1/responses/{id}, with what it billed, which a response that
    continues it (`previous_response_id`) is billed again as its history."""

    response: dict[str, Any]
    input_tokens: int
    output_tokens: int


@dataclass
class FakeState:
    """What the fake saw; read by tests through /_fake/stats and /_fake/bills."""

    key: str
    latency_ms: float = 0.0
    requests: int = 0
    open_streams: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    last_request: dict[str, Any] | None = None
    responses: OrderedDict[str, StoredResponse] = field(default_factory=OrderedDict)
    # By x-request-id, oldest first. The totals run since the last reset, so they stay exact
    # after old bills fall off the end.
    bills: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    bill_totals: dict[str, Any] = field(default_factory=_no_bills)
    # Set once served through `start_server`; aiohttp keeps the live connections there.
    web_server: web.Server | None = None

    def remember(self, response: dict[str, Any], *, input_tokens: int, output_tokens: int) -> None:
        self.responses[response["id"]] = StoredResponse(response, input_tokens, output_tokens)
        self.responses.move_to_end(response["id"])
        while len(self.responses) > MAX_STORED_RESPONSES:
            self.responses.popitem(last=False)

    def close_tab(self, tab: Tab) -> dict[str, Any]:
        bill = tab.bill()
        self.bills[bill["request_id"]] = bill
        while len(self.bills) > MAX_BILLS:
            self.bills.popitem(last=False)
        totals = self.bill_totals
        totals["requests"] += 1
        for name in _TOTALLED:
            totals[name] += bill[name]
        for tool_type, calls in bill["tool_calls"].items():
            totals["tool_calls"][tool_type] = totals["tool_calls"].get(tool_type, 0) + calls
        return bill

    def reset(self) -> None:
        """Forget what was seen and billed; streams still open stay counted."""
        self.requests = 0
        self.by_path.clear()
        self.last_request = None
        self.responses.clear()
        self.bills.clear()
        self.bill_totals = _no_bills()


STATE = web.AppKey("fake_openai_state", FakeState)
