"""What the fake saw and what it billed: read by tests through /_fake/stats and /_fake/bills.

What the fake assumes OpenAI bills when a request ends badly: a refused request nothing; a
client gone before the headers its input only (with its audio and tool calls, which ran
before any output); a stream cut, ended early or left its input and the output that went out
(the audio with the words it came with); a stored response is re-billed, input and output,
as the history of a response that continues it (`fakeopenai.responses`). A batch bills each
line it ran as a request of its own, marked with the batch and the line (`fakeopenai.batch_api`);
the calls to /v1/files and /v1/batches themselves bill nothing (a bill of 0/0). An images or
audio bill alone also carries that family's measures (images made, characters, seconds heard
…; `fakeopenai.image_api`, `fakeopenai.audio_api`): the input ones billed like the prompt,
the output ones like the completion.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

if TYPE_CHECKING:  # batch_api reads the state, so the import only goes one way at run time
    from fakeopenai.batch_api import BatchRun

# Bounded so a benchmark of a million calls cannot grow the process without end.
MAX_STORED_RESPONSES = 10_000
MAX_BILLS = 100_000
# Uploaded files and batch output kept for /v1/files, oldest dropped first past either bound.
MAX_STORED_FILES = 10_000
MAX_STORED_FILE_BYTES = 256 * 1024**2
MAX_STORED_BATCHES = 10_000

Outcome = Literal["completed", "cut", "ended_early", "client_gone", "error"]


@dataclass
class Tab:
    """One request's bill while it runs. The handler says what the answer costs, the stream
    writer how far it got, and the gateway closes it exactly once, whatever happened."""

    request_id: str
    path: str
    model: str | None = None
    # When the request came in (Unix seconds): the day the organization Usage and Costs API
    # count it in (`fakeopenai.org_api`).
    created_at: float = field(default_factory=time.time)
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
    # A line a batch ran (`fakeopenai.batch_api`): the batch and the line's custom_id.
    batch_id: str | None = None
    custom_id: str | None = None
    # Images and audio (`fakeopenai.image_api`, `fakeopenai.audio_api`); their bills alone
    # carry these. Inside prompt_tokens: text_input_tokens, image_input_tokens; inside
    # output_tokens: image_output_tokens.
    images: int = 0  # the images made
    image_progress: Callable[[int], int] | None = None  # images out once n frames were written
    image_size: str | None = None
    image_quality: str | None = None
    text_input_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    characters: int = 0  # tts-1 and tts-1-hd bill the characters spoken
    audio_seconds: int = 0  # whisper-1 bills the seconds heard
    # More of what a bill says, for families whose bills say more (a realtime response's
    # status and cached tokens, `fakeopenai.realtime`); none of the keys above.
    extra: dict[str, Any] = field(default_factory=dict)

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
        bill = {
            "request_id": self.request_id,
            "path": self.path,
            "model": self.model,
            "created_at": int(self.created_at),
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
            **self._media_bill(outcome, completion),
        }
        for name, value in self.extra.items():
            bill.setdefault(name, value)
        if self.batch_id is not None:
            # Only a batch line's bill says so: a direct request's keeps its keys.
            bill["batch_id"], bill["custom_id"] = self.batch_id, self.custom_id
        return bill

    def _media_bill(self, outcome: Outcome, completion: int) -> dict[str, Any]:
        """An images or audio request's own measures: the input ones billed unless refused,
        the output ones as the tokens are."""
        if not self.path.startswith(MEDIA_PATHS):
            return {}
        billed = outcome != "error"
        if outcome == "completed":
            images, image_output = self.images, self.image_output_tokens
        elif not billed or self.status is None:
            images = image_output = 0
        else:
            images = self.image_progress(self.content_frames) if self.image_progress else 0
            image_output = min(self.image_output_tokens, completion)
        return {
            "images": images,
            "image_size": self.image_size,
            "image_quality": self.image_quality,
            "text_input_tokens": self.text_input_tokens if billed else 0,
            "image_input_tokens": self.image_input_tokens if billed else 0,
            "image_output_tokens": image_output,
            "characters": self.characters if billed else 0,
            "audio_seconds": self.audio_seconds if billed else 0,
        }


MEDIA_PATHS = ("/v1/images/", "/v1/audio/")
# Totalled once an images or audio request was billed.
MEDIA_TOTALLED = (
    "images",
    "text_input_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "characters",
    "audio_seconds",
)

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


@dataclass(frozen=True)
class StoredFile:
    """A file for /v1/files: an upload, or a batch's output or error file. `info` is its
    FileObject."""

    info: dict[str, Any]
    content: bytes


@dataclass
class FakeState:
    """What the fake saw; read by tests through /_fake/stats and /_fake/bills."""

    key: str
    # The admin key the organization Usage and Costs API accepts (`fakeopenai.org_api`).
    admin_key: str = ""
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
    # By id, oldest first (`fakeopenai.file_api`, `fakeopenai.batch_api`).
    files: OrderedDict[str, StoredFile] = field(default_factory=OrderedDict)
    file_bytes: int = 0
    batches: OrderedDict[str, BatchRun] = field(default_factory=OrderedDict)
    # The batches running in the background, kept so they are not collected mid-run and can
    # be cancelled by a reset and when the app is cleaned up.
    batch_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Shifts of the organization's bill made by POST /_fake/org/adjust (`fakeopenai.org_api`).
    org_adjustments: list[dict[str, Any]] = field(default_factory=list)
    # Set once served through `start_server`; aiohttp keeps the live connections there.
    web_server: web.Server | None = None

    def remember(self, response: dict[str, Any], *, input_tokens: int, output_tokens: int) -> None:
        self.responses[response["id"]] = StoredResponse(response, input_tokens, output_tokens)
        self.responses.move_to_end(response["id"])
        while len(self.responses) > MAX_STORED_RESPONSES:
            self.responses.popitem(last=False)

    def store_file(self, stored: StoredFile) -> None:
        file_id = stored.info["id"]
        self.drop_file(file_id)
        self.files[file_id] = stored
        self.file_bytes += len(stored.content)
        while len(self.files) > 1 and (
            len(self.files) > MAX_STORED_FILES or self.file_bytes > MAX_STORED_FILE_BYTES
        ):
            _, dropped = self.files.popitem(last=False)
            self.file_bytes -= len(dropped.content)

    def drop_file(self, file_id: str) -> StoredFile | None:
        stored = self.files.pop(file_id, None)
        if stored is not None:
            self.file_bytes -= len(stored.content)
        return stored

    def remember_batch(self, batch: BatchRun) -> None:
        self.batches[batch.id] = batch
        while len(self.batches) > MAX_STORED_BATCHES:
            _, dropped = self.batches.popitem(last=False)
            if dropped.task is not None:
                dropped.task.cancel()

    def start_batch(self, task: asyncio.Task[None]) -> None:
        self.batch_tasks.add(task)
        task.add_done_callback(self.batch_tasks.discard)

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
        for name in MEDIA_TOTALLED:
            if name in bill:
                totals[name] = totals.get(name, 0) + bill[name]
        return bill

    def reset(self) -> None:
        """Forget what was seen and billed, files and batches too (a running batch is stopped
        where it is, its line in flight unbilled); streams still open stay counted."""
        for task in self.batch_tasks:
            task.cancel()
        self.batch_tasks.clear()
        self.batches.clear()
        self.files.clear()
        self.file_bytes = 0
        self.requests = 0
        self.by_path.clear()
        self.last_request = None
        self.responses.clear()
        self.bills.clear()
        self.bill_totals = _no_bills()
        self.org_adjustments.clear()


STATE = web.AppKey("fake_openai_state", FakeState)
