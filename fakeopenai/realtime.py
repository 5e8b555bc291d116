"""The Realtime API: a WebSocket at GET /v1/realtime?model=..., in the GA shapes the SDK speaks.

The gateway (`fakeopenai.app`) checks the bearer key before the handshake, as for any /v1
request: a wrong key is a 401 in OpenAI's shape and no WebSocket. Then the fake sends
`session.created` and answers, in order, the client events a text or audio session uses:
`session.update` (`session.updated`), `conversation.item.create` (`conversation.item.added`
and `conversation.item.done`), `input_audio_buffer.append` / `commit` / `clear`,
`response.create` (`response.created`, the output item and content part, `response.
output_text.delta` or `response.output_audio.delta` + `response.output_audio_transcript.
delta` events, their `.done`s and `response.done` with its usage) and `response.cancel`.
With server VAD on (the default, as at OpenAI) the fake takes appended audio for speech that
stops once no audio came for the turn detection's `silence_duration_ms`: it commits the
buffer and, with `create_response`, starts a response by itself.

What the fake assumes OpenAI bills, one bill per `response.done` (at /_fake/bills, keyed by
the response id, path /v1/realtime; the session's own bill is 0/0):

- input: the whole conversation so far, every response, in the default conversation — the
  instructions (the response's, else the session's), the tool definitions (their JSON), and
  every item: text counted with tiktoken o200k_base, audio at 10 tokens a second (24 kHz
  pcm16: 4,800 bytes a token; G.711: 800), rounded up per item. A reply becomes input of the
  next response: its text and its audio tokens again. `response.input` replaces the
  conversation for that response. Nothing is cached unless `fake_cached_tokens` says so
  (text tokens only).
- output: the reply, `fake_completion_tokens` text tokens (12 by default) and, when spoken,
  20 audio tokens a second at 2.5 words a second (`fakeopenai.audio.speech_tokens`); the
  response's `max_output_tokens` (else the session's; "inf" is none) caps text and audio
  together, in proportion, and the response is then `incomplete`.
- a response cancelled (`response.cancel`, or the client gone mid-response) is billed its
  whole input and the output sent so far; its `response.done` says `cancelled`.

A response is steered by string values in `response.metadata` (the proxy relays events
untouched): `fake_completion_tokens`, `fake_chunk_delay_ms` (between deltas),
`fake_cached_tokens`, `fake_cut_after` (close the socket, 1011, after that many deltas: the
response is billed what went out, as for a cut stream).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import math
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from fakeopenai.audio import speech_tokens
from fakeopenai.content import reply_text, split_pieces
from fakeopenai.counting import count_o200k
from fakeopenai.errors import OpenAIError
from fakeopenai.protocol import REQUEST_ID, TAB, ident
from fakeopenai.state import STATE, FakeState, Tab

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Act like a human, but remember that you "
    "aren't a human. Your voice and personality should be warm and engaging."
)
DEFAULT_COMPLETION_TOKENS = 12
INPUT_AUDIO_TOKENS_PER_SECOND = 10
OUTPUT_AUDIO_TOKENS_PER_SECOND = 20
# Bytes a second of each input format: pcm16 at 24 kHz, G.711 (µ-law, A-law) at 8 kHz.
_BYTES_PER_SECOND = {"audio/pcm": 48_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}
# A spoken reply's audio: 24 kHz pcm16 (2,400 bytes an output token at 20 a second).
_OUTPUT_BYTES_PER_TOKEN = 48_000 // OUTPUT_AUDIO_TOKENS_PER_SECOND
_MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this


def _event_id() -> str:
    return ident("event_", 24)


def _error(message: str, *, code: str | None, event_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": _event_id(),
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": event_id,
        },
    }


def _default_session(model: str) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": ident("sess_", 24),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A session.update's fields over the session's; `audio` merged a level deeper."""
    merged = {**old}
    for name, value in new.items():
        if name in ("audio",) and isinstance(value, dict) and isinstance(old.get(name), dict):
            audio = {**old[name]}
            for side, config in value.items():
                if isinstance(config, dict) and isinstance(audio.get(side), dict):
                    audio[side] = {**audio[side], **config}
                else:
                    audio[side] = config
            merged[name] = audio
        elif name not in ("id", "object", "expires_at"):
            merged[name] = value
    return merged


def _b64_length(data: object) -> int:
    if not isinstance(data, str):
        return 0
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return 0


@dataclasses.dataclass
class Item:
    """A conversation item and what it is billed as input."""

    body: dict[str, Any]
    text_tokens: int = 0
    audio_tokens: int = 0


@dataclasses.dataclass
class Running:
    """A response being made, and how far it got."""

    id: str
    task: asyncio.Task | None = None
    input_text: int = 0
    input_audio: int = 0
    cached: int = 0
    text_out: int = 0  # output tokens sent so far
    audio_out: int = 0
    in_conversation: bool = True
    status: str = "in_progress"
    reason: str | None = None


def _metadata_int(metadata: object, name: str, default: int | None = None) -> int | None:
    if not isinstance(metadata, dict) or not isinstance(metadata.get(name), str):
        return default
    try:
        return max(0, int(float(metadata[name])))
    except ValueError:
        return default


class RealtimeSession:
    """One WebSocket's session: its configuration, conversation, audio buffer, responses."""

    def __init__(self, ws: web.WebSocketResponse, state: FakeState, model: str) -> None:
        self.ws = ws
        self.state = state
        self.model = model
        self.session = _default_session(model)
        self.items: list[Item] = []
        self.buffer = bytearray()
        self.running: dict[str, Running] = {}
        self.vad_timer: asyncio.TimerHandle | None = None
        self.speaking = False
        self._send_lock = asyncio.Lock()

    # -- out ---------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _event_id())
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_str(orjson.dumps(event).decode())

    # -- what input costs ----------------------------------------------------------------------
    def _audio_format(self) -> str:
        audio = self.session.get("audio") or {}
        fmt = ((audio.get("input") or {}).get("format") or {}).get("type")
        return fmt if fmt in _BYTES_PER_SECOND else "audio/pcm"

    def _audio_tokens(self, size: int) -> int:
        seconds = size / _BYTES_PER_SECOND[self._audio_format()]
        return math.ceil(seconds * INPUT_AUDIO_TOKENS_PER_SECOND)

    def _measure(self, body: dict[str, Any]) -> Item:
        item = Item(body)
        content = body.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("input_audio", "output_audio"):
                # Audio is billed as audio; its transcript is not read again as text.
                item.audio_tokens += self._audio_tokens(_b64_length(part.get("audio")))
            elif isinstance(part.get("text"), str):
                item.text_tokens += count_o200k(part["text"])
        for field in ("name", "arguments", "output"):
            if isinstance(body.get(field), str):
                item.text_tokens += count_o200k(body[field])
        return item

    def _instructions_and_tools(self, params: dict[str, Any]) -> int:
        instructions = params.get("instructions", self.session.get("instructions"))
        tools = params.get("tools", self.session.get("tools"))
        tokens = count_o200k(instructions) if isinstance(instructions, str) else 0
        if tools:
            tokens += count_o200k(orjson.dumps(tools).decode())
        return tokens

    # -- events in ------------------------------------------------------------------------------
    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.send(
                _error(
                    f"Invalid value: '{kind}'. Supported values are: 'session.update', "
                    "'conversation.item.create', 'input_audio_buffer.append', "
                    "'input_audio_buffer.commit', 'input_audio_buffer.clear', "
                    "'response.create' and 'response.cancel'.",
                    code="invalid_value",
                    event_id=event.get("event_id"),
                )
            )
            return
        await handler(self, event)

    async def session_update(self, event: dict[str, Any]) -> None:
        new = event.get("session")
        if not isinstance(new, dict):
            await self.send(
                _error(
                    "Missing required parameter: 'session'.",
                    code="missing_required_parameter",
                    event_id=event.get("event_id"),
                )
            )
            return
        self.session = _merged(self.session, new)
        await self.send({"type": "session.updated", "session": self.session})

    async def item_create(self, event: dict[str, Any]) -> None:
        body = event.get("item")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            await self.send(
                _error(
                    "Missing required parameter: 'item'.",
                    code="missing_required_parameter",
                    event_id=event.get("event_id"),
                )
            )
            return
        body = {"id": ident("item_", 24), "object": "realtime.item", **body, "status": "completed"}
        await self._add_item(self._measure(body))

    async def _add_item(self, item: Item) -> None:
        previous = self.items[-1].body["id"] if self.items else None
        self.items.append(item)
        for kind in ("conversation.item.added", "conversation.item.done"):
            await self.send({"type": kind, "previous_item_id": previous, "item": _shown(item.body)})

    async def audio_append(self, event: dict[str, Any]) -> None:
        try:
            self.buffer += base64.b64decode(event.get("audio") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            await self.send(
                _error(
                    "Invalid 'audio'. Expected base64-encoded audio bytes.",
                    code="invalid_value",
                    event_id=event.get("event_id"),
                )
            )
            return
        vad = self._turn_detection()
        if vad is None:
            return
        if not self.speaking:
            self.speaking = True
            await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0})
        if self.vad_timer is not None:
            self.vad_timer.cancel()
        silence = vad.get("silence_duration_ms")
        delay = silence / 1000 if isinstance(silence, int | float) and silence >= 0 else 0.2
        self.vad_timer = asyncio.get_running_loop().call_later(
            delay, lambda: _spawn(self._speech_stopped(vad))
        )

    def _turn_detection(self) -> dict[str, Any] | None:
        audio = self.session.get("audio") or {}
        vad = (audio.get("input") or {}).get("turn_detection")
        return vad if isinstance(vad, dict) else None

    async def _speech_stopped(self, vad: dict[str, Any]) -> None:
        self.vad_timer = None
        self.speaking = False
        ms = len(self.buffer) * 1000 // _BYTES_PER_SECOND[self._audio_format()]
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms})
        if await self._commit(None) and vad.get("create_response", True):
            await self.response_create({"type": "response.create"})

    async def audio_commit(self, event: dict[str, Any]) -> None:
        await self._commit(event.get("event_id"))

    async def _commit(self, event_id: str | None) -> bool:
        size = len(self.buffer)
        ms = size * 1000 / _BYTES_PER_SECOND[self._audio_format()]
        if ms < _MIN_COMMIT_MS:
            await self.send(
                _error(
                    f"Error committing input audio buffer: buffer too small. Expected at least "
                    f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                    code="input_audio_buffer_commit_empty",
                    event_id=event_id,
                )
            )
            return False
        item_id = ident("item_", 24)
        previous = self.items[-1].body["id"] if self.items else None
        self.buffer = bytearray()
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        body = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self._add_item(Item(body, audio_tokens=self._audio_tokens(size)))
        return True

    async def audio_clear(self, event: dict[str, Any]) -> None:
        self.buffer = bytearray()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") if isinstance(event.get("response"), dict) else {}
        in_conversation = params.get("conversation", "auto") != "none"
        if in_conversation and any(r.in_conversation for r in self.running.values()):
            await self.send(
                _error(
                    "Conversation already has an active response in progress. Wait until the "
                    "response is finished before creating a new one.",
                    code="conversation_already_has_active_response",
                    event_id=event.get("event_id"),
                )
            )
            return
        if isinstance(params.get("input"), list):
            items = [self._measure(i) for i in params["input"] if isinstance(i, dict)]
        else:
            items = list(self.items)
        text_in = self._instructions_and_tools(params) + sum(i.text_tokens for i in items)
        audio_in = sum(i.audio_tokens for i in items)
        metadata = params.get("metadata")
        cached = min(_metadata_int(metadata, "fake_cached_tokens", 0) or 0, text_in)
        running = Running(
            id=ident("resp_", 24),
            input_text=text_in,
            input_audio=audio_in,
            cached=cached,
            in_conversation=in_conversation,
        )
        self.running[running.id] = running
        running.task = _spawn(self._respond(running, params))

    async def response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        for running in list(self.running.values()):
            if wanted in (None, running.id) and running.task is not None:
                running.status, running.reason = "cancelled", "client_cancelled"
                running.task.cancel()
                return
        await self.send(
            _error(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active",
                event_id=event.get("event_id"),
            )
        )

    # -- a response ----------------------------------------------------------------------------
    def _max_output(self, params: dict[str, Any]) -> int | None:
        limit = params.get("max_output_tokens", self.session.get("max_output_tokens"))
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    async def _respond(self, running: Running, params: dict[str, Any]) -> None:
        modalities = params.get("output_modalities") or self.session.get("output_modalities")
        spoken = isinstance(modalities, list) and "audio" in modalities
        metadata = params.get("metadata")
        wanted = _metadata_int(metadata, "fake_completion_tokens", DEFAULT_COMPLETION_TOKENS) or 0
        delay = (_metadata_int(metadata, "fake_chunk_delay_ms", 0) or 0) / 1000
        cut_after = _metadata_int(metadata, "fake_cut_after")
        limit = self._max_output(params)
        text = reply_text("o200k_base", wanted)
        audio = speech_tokens(text) if spoken else 0
        truncated = limit is not None and wanted + audio > limit
        if truncated:
            assert limit is not None
            # Speech and transcript come out together: the max stops both, in proportion.
            text_tokens = limit * wanted // (wanted + audio) if wanted + audio else 0
            audio = limit - text_tokens if spoken else 0
            text = reply_text("o200k_base", text_tokens)
        pieces = split_pieces(text, None) or [""]
        item_id = ident("item_", 24)
        part_type = "output_audio" if spoken else "output_text"
        response = self._response_object(running, params, [])
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        ids = {"response_id": running.id, "item_id": item_id, "output_index": 0}
        sent = ""
        try:
            await self.send({"type": "response.created", "response": response})
            await self.send(
                {
                    "type": "response.output_item.added",
                    **_pick(ids, "response_id", "output_index"),
                    "item": item,
                }
            )
            await self.send({"type": "conversation.item.added", "item": item})
            part = {"type": part_type, "transcript" if spoken else "text": ""}
            await self.send(
                {"type": "response.content_part.added", **ids, "content_index": 0, "part": part}
            )
            for i, piece in enumerate(pieces):
                if i == cut_after:
                    # The connection drops mid-response: billed what was made, nothing told.
                    running.status = "failed"
                    self._close_bill(running, outcome="cut")
                    self.running.pop(running.id, None)  # ended: not cancelled on the close
                    await self.ws.close(code=1011, message=b"fake: connection cut")
                    return
                if delay:
                    await asyncio.sleep(delay)
                sent += piece
                running.text_out = count_o200k(sent)
                if spoken:
                    share = audio * (i + 1) // len(pieces) - running.audio_out
                    running.audio_out += share
                    chunk = base64.b64encode(bytes(share * _OUTPUT_BYTES_PER_TOKEN)).decode()
                    await self.send(
                        {
                            "type": "response.output_audio.delta",
                            **ids,
                            "content_index": 0,
                            "delta": chunk,
                        }
                    )
                    await self.send(
                        {
                            "type": "response.output_audio_transcript.delta",
                            **ids,
                            "content_index": 0,
                            "delta": piece,
                        }
                    )
                else:
                    await self.send(
                        {
                            "type": "response.output_text.delta",
                            **ids,
                            "content_index": 0,
                            "delta": piece,
                        }
                    )
            running.status = "incomplete" if truncated else "completed"
            running.reason = "max_output_tokens" if truncated else None
            if spoken:
                await self.send({"type": "response.output_audio.done", **ids, "content_index": 0})
                await self.send(
                    {
                        "type": "response.output_audio_transcript.done",
                        **ids,
                        "content_index": 0,
                        "transcript": text,
                    }
                )
                part = {"type": "output_audio", "transcript": text}
            else:
                await self.send(
                    {"type": "response.output_text.done", **ids, "content_index": 0, "text": text}
                )
                part = {"type": "output_text", "text": text}
            await self.send(
                {"type": "response.content_part.done", **ids, "content_index": 0, "part": part}
            )
            item = {
                **item,
                "status": "completed" if not truncated else "incomplete",
                "content": [part],
            }
            await self.send(
                {
                    "type": "response.output_item.done",
                    **_pick(ids, "response_id", "output_index"),
                    "item": item,
                }
            )
            await self.send({"type": "conversation.item.done", "item": item})
        except asyncio.CancelledError:
            if running.status == "in_progress":  # the client left: nobody to tell
                running.status, running.reason = "cancelled", "client_gone"
                self._close_bill(running, outcome="client_gone")
                raise
            item = {**item, "status": "incomplete", "content": [_partial(part_type, sent)]}
        finally:
            self.running.pop(running.id, None)
        if running.in_conversation:
            self.items.append(
                Item(item, text_tokens=running.text_out, audio_tokens=running.audio_out)
            )
        done = self._response_object(running, params, [item])
        self._close_bill(running, outcome="completed")
        await self.send({"type": "response.done", "response": done})

    def _response_object(
        self, running: Running, params: dict[str, Any], output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        finished = running.status != "in_progress"
        return {
            "object": "realtime.response",
            "id": running.id,
            "status": running.status,
            "status_details": {"type": running.status, "reason": running.reason}
            if finished and running.status != "completed"
            else None,
            "output": output,
            "conversation_id": "conv_fake" if running.in_conversation else None,
            "output_modalities": params.get("output_modalities")
            or self.session.get("output_modalities"),
            "max_output_tokens": params.get(
                "max_output_tokens", self.session.get("max_output_tokens")
            ),
            "audio": {"output": self.session.get("audio", {}).get("output")},
            "metadata": params.get("metadata"),
            "usage": _usage(running) if finished else None,
        }

    def _close_bill(self, running: Running, *, outcome: str) -> None:
        tab = Tab(request_id=running.id, path="/v1/realtime", model=self.model, stream=True)
        tab.status = 200
        tab.usage_reported = outcome == "completed"
        tab.outcome = outcome  # type: ignore[assignment]
        text_out, audio_out = running.text_out, running.audio_out
        tab.charge(
            prompt=running.input_text + running.input_audio,
            output=text_out + audio_out,
            progress=lambda _frames: text_out + audio_out,
            audio_input=running.input_audio,
            audio_output=audio_out,
            audio_progress=lambda _frames: audio_out,
        )
        tab.extra = {
            "response_status": running.status,
            "cached_tokens": running.cached,
            "cached_audio_tokens": 0,
        }
        self.state.close_tab(tab)

    async def close(self) -> None:
        if self.vad_timer is not None:
            self.vad_timer.cancel()
        for running in list(self.running.values()):
            if running.task is not None:
                running.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running.task


def _pick(values: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: values[name] for name in names}


def _partial(part_type: str, sent: str) -> dict[str, Any]:
    return {"type": part_type, "transcript" if part_type == "output_audio" else "text": sent}


def _shown(body: dict[str, Any]) -> dict[str, Any]:
    """An item as events show it: without its audio bytes, as OpenAI sends it."""
    content = body.get("content")
    if not isinstance(content, list):
        return body
    return {
        **body,
        "content": [
            {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part
            for part in content
        ],
    }


def _usage(running: Running) -> dict[str, Any]:
    input_tokens = running.input_text + running.input_audio
    output_tokens = running.text_out + running.audio_out
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": running.input_text,
            "audio_tokens": running.input_audio,
            "image_tokens": 0,
            "cached_tokens": running.cached,
            "cached_tokens_details": {
                "text_tokens": running.cached,
                "audio_tokens": 0,
                "image_tokens": 0,
            },
        },
        "output_token_details": {
            "text_tokens": running.text_out,
            "audio_tokens": running.audio_out,
        },
    }


_tasks: set[asyncio.Task] = set()


def _spawn(coro: Any) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


_HANDLERS = {
    "session.update": RealtimeSession.session_update,
    "conversation.item.create": RealtimeSession.item_create,
    "input_audio_buffer.append": RealtimeSession.audio_append,
    "input_audio_buffer.commit": RealtimeSession.audio_commit,
    "input_audio_buffer.clear": RealtimeSession.audio_clear,
    "response.create": RealtimeSession.response_create,
    "response.cancel": RealtimeSession.response_cancel,
}


async def realtime(request: web.Request) -> web.StreamResponse:
    """GET /v1/realtime?model=...: the key was checked by the gateway; a model is required."""
    model = request.query.get("model", "")
    tab = request[TAB]
    tab.model = model or None
    if not model:
        raise OpenAIError(
            400, "Missing required parameter: 'model'.", param="model", code="missing_model"
        )
    ws = web.WebSocketResponse(max_msg_size=0, protocols=("realtime",))
    ws.headers["x-request-id"] = request[REQUEST_ID]
    await ws.prepare(request)
    tab.status, tab.outcome, tab.stream = 101, "completed", True
    session = RealtimeSession(ws, request.app[STATE], model)
    await session.send({"type": "session.created", "session": session.session})
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                event = orjson.loads(message.data)
            except orjson.JSONDecodeError:
                await session.send(_error("The event is not valid JSON.", code="invalid_json"))
                continue
            if isinstance(event, dict):
                await session.handle(event)
    finally:
        await session.close()
    return ws
