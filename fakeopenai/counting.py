"""How the fake upstream counts prompt tokens: tiktoken directly, on its own rules.

This deliberately shares no counting code with the proxy (`relay.tokens`): usage that always
equals the proxy's own estimate could never catch an accounting bug. The rules follow what
OpenAI documents (the cookbook's chat recipe: 3 tokens per message, 1 more per `name`, 3 to
prime the reply), so the numbers are close to the proxy's, not identical by construction.
Only tiktoken's offline encodings are shared, installed by `relay.tokens.install_encodings`.

What the fake assumes OpenAI bills for text: a chat prompt is 3 tokens a message, the tokens
of each of its values (1 more for a `name`), and 3 to prime the reply; a completions prompt,
an embeddings input and a Responses input are the tokens of their text, each Responses
message item with the same 3 of overhead as a chat message. Parts that are not text are
counted by `fakeopenai.parts`.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import orjson
import tiktoken

from fakeopenai.parts import PartCounter

_O200K_FAMILIES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_TEXT_FIELDS = ("text", "refusal")
_MESSAGE_FIELDS = ("role", "name", "content")


def encodings_dir() -> Path:
    """Django's TIKTOKEN_CACHE_DIR when settings are configured, else a temp folder."""
    from django.conf import settings

    if settings.configured:
        return Path(settings.TIKTOKEN_CACHE_DIR)
    return Path(tempfile.gettempdir()) / "fake-openai-tiktoken"


def install_encodings(folder: str | Path | None = None) -> None:
    # tiktoken would download its files on first use; a closed test box has no network.
    from relay.tokens import install_encodings as unpack_shipped_encodings

    unpack_shipped_encodings(folder or encodings_dir())


def encoding_for(model: str) -> str:
    """o200k_base for gpt-4o, 4.1, 4.5, 5 and the o-series; cl100k_base for anything else."""
    name = model.removeprefix("ft:")
    return "o200k_base" if name.startswith(_O200K_FAMILIES) else "cl100k_base"


@functools.cache
def encoder(encoding: str) -> tiktoken.Encoding:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # Used before any app was created (a unit test).
        install_encodings()
    return tiktoken.get_encoding(encoding)


def count_text(text: str, model: str) -> int:
    if not text:
        return 0
    return len(encoder(encoding_for(model)).encode(text, disallowed_special=()))


def count_o200k(text: str) -> int:
    """Text read by the image and audio models, which OpenAI counts in o200k_base."""
    if not text:
        return 0
    return len(encoder("o200k_base").encode(text, disallowed_special=()))


def _content_tokens(content: object, model: str, parts: PartCounter) -> int:
    """A message's content: a string, or parts (text, images, audio, files)."""
    if isinstance(content, str):
        return count_text(content, model)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_text(part, model)
        elif isinstance(part, dict):
            media = parts.tokens(part)
            if media is not None:
                total += media
                continue
            for field in _TEXT_FIELDS:
                if isinstance(part.get(field), str):
                    total += count_text(part[field], model)
    return total


def _tool_calls_tokens(calls: object, model: str) -> int:
    if not isinstance(calls, list):
        return 0
    total = 0
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for field in ("name", "arguments"):
                if isinstance(function.get(field), str):
                    total += count_text(function[field], model)
        elif call is not None:
            total += count_text(orjson.dumps(call).decode(), model)
    return total


def _message_tokens(message: object, model: str, parts: PartCounter) -> int:
    total = 3  # <|start|>{role/name}\n{content}<|end|>\n
    if not isinstance(message, dict):
        return total
    for field, value in message.items():
        if field == "content":
            total += _content_tokens(value, model, parts)
        elif field == "tool_calls":
            total += _tool_calls_tokens(value, model)
        elif isinstance(value, str):
            total += count_text(value, model)
            if field == "name":
                total += 1
    return total


def count_chat_prompt(messages: object, model: str, parts: PartCounter | None = None) -> int:
    if not isinstance(messages, list):
        return 0
    if parts is None:
        parts = PartCounter(model)
    # Every reply is primed with <|start|>assistant<|message|>.
    return 3 + sum(_message_tokens(message, model, parts) for message in messages)


def count_input(value: object, model: str, parts: PartCounter | None = None) -> int:
    """A completions `prompt`, an embeddings `input` or a Responses `input`."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value, model)
    if not isinstance(value, list):
        return 0
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return len(value)  # one prompt already in tokens
    if parts is None:
        parts = PartCounter(model)
    total = 0
    for item in value:
        if isinstance(item, dict) and "role" in item:
            # An output item sent back as input carries an id and a status: not prompt text.
            message = {k: item[k] for k in _MESSAGE_FIELDS if k in item}
            total += _message_tokens(message, model, parts)
        elif isinstance(item, dict):
            # A tool call or its output, or a bare content part.
            total += _content_tokens([item], model, parts) + sum(
                count_text(item[field], model)
                for field in ("arguments", "output")
                if isinstance(item.get(field), str)
            )
        else:
            total += count_input(item, model, parts)
    return total
