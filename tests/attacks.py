"""Calls a user can send that OpenAI bills for more than their visible text, each costlier
than a small budget, for the budget tests and bench/budget_overspend.py.

Every call asks the fake upstream to bill what OpenAI would at most (the whole output
maximum, every allowed tool call, audio for every output token): if the proxy's reservation
under-counts any of it, concurrent calls push recorded spend past the budget.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

HELLO = "Tell me about the proxy."


def png(width: int, height: int) -> bytes:
    """A PNG header the size a client would send (the fake and the proxy read only it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def wav(seconds: float, rate: int = 8000) -> bytes:
    data = b"\x00\x00" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _tools(n: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": f"lookup_{i}",
            "description": "Look up one record of the customer database by its identifier. " * 6,
            "parameters": {
                "type": "object",
                "properties": {
                    f"field_{j}": {"type": "string", "description": "a field to filter on"}
                    for j in range(8)
                },
            },
        }
        for i in range(n)
    ]


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    endpoint: str  # "chat" or "responses"
    body: Callable[[dict[str, Any]], dict[str, Any]]  # context (setup's result) -> body
    # A call made first with a key of the same user that has no budget (what the attack
    # builds on, e.g. a long response to continue); returns the context for `body`.
    setup: Callable[[Any], dict[str, Any]] | None = None
    budget: Decimal = Decimal("0.002")  # less than one call costs


def _long_response(client: Any) -> dict[str, Any]:
    first = client.responses.create(
        model="gpt-4o",
        input="Remember this. " * 700,
        max_output_tokens=200,
        extra_body={"fake": {"completion_tokens": 200}},
    )
    return {"previous": first.id}


ATTACKS = [
    Attack(
        "previous_response_id history",
        "responses",
        lambda ctx: {
            "model": "gpt-4o",
            "input": "And then?",
            "previous_response_id": ctx["previous"],
            "max_output_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16}},
        },
        setup=_long_response,
    ),
    Attack(
        "large Responses tools",
        "responses",
        lambda ctx: {
            "model": "gpt-4o",
            "input": HELLO,
            "tools": _tools(20),
            "max_output_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16}},
        },
    ),
    Attack(
        "audio output",
        "chat",
        lambda ctx: {
            "model": "gpt-4o-audio-preview-2025-06-03",
            "messages": [{"role": "user", "content": HELLO}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "wav"},
            "max_completion_tokens": 100,
            "extra_body": {"fake": {"completion_tokens": 100, "audio_output_tokens": 100}},
        },
    ),
    Attack(
        "audio input",
        "chat",
        lambda ctx: {
            "model": "gpt-4o-audio-preview-2025-06-03",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Transcribe this."},
                        {
                            "type": "input_audio",
                            "input_audio": {"data": b64(wav(20)), "format": "wav"},
                        },
                    ],
                }
            ],
            "max_completion_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16}},
        },
    ),
    Attack(
        "high-detail images",
        "chat",
        lambda ctx: {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What do these show?"}]
                    + [
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": f"data:image/png;base64,{b64(png(1024, 1024))}",
                                "detail": "high",
                            },
                        }
                    ]
                    * 4,
                }
            ],
            "max_completion_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16}},
        },
    ),
    Attack(
        "inline file",
        "responses",
        lambda ctx: {
            "model": "gpt-4o",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Summarise."},
                        {
                            "type": "input_file",
                            "filename": "report.pdf",
                            "file_data": "data:application/pdf;base64,"
                            + b64(b"%PDF-1.4\n" + b"lorem ipsum dolor " * 560),
                        },
                    ],
                }
            ],
            "max_output_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16}},
        },
    ),
    Attack(
        "web search tool calls",
        "responses",
        lambda ctx: {
            "model": "gpt-5",
            "input": HELLO,
            "tools": [{"type": "web_search"}],
            "max_tool_calls": 3,
            "max_output_tokens": 16,
            "extra_body": {"fake": {"completion_tokens": 16, "tool_calls": 3}},
        },
    ),
    Attack(
        "n choices",
        "chat",
        lambda ctx: {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": HELLO}],
            "n": 8,
            "max_completion_tokens": 200,
            "extra_body": {"fake": {"completion_tokens": 200}},
        },
    ),
]


def send(client: Any, attack: Attack, ctx: dict[str, Any]) -> str:
    """One call; "ok" or the error's code."""
    import openai

    body = attack.body(ctx)
    try:
        if attack.endpoint == "chat":
            client.chat.completions.create(**body)
        else:
            client.responses.create(**body)
    except openai.APIStatusError as exc:
        return str(exc.code or exc.status_code)
    return "ok"
