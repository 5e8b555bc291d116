"""Pure functions that size a metered request: its output maximum, its prompt, its allowance."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings

from relay.tokens import count_chat_prompt, count_input, count_text

# Metered POST endpoints and the kind of body each takes.
METERED = {
    "chat/completions": "chat",
    "completions": "completion",
    "embeddings": "embedding",
    "responses": "responses",
    "moderations": "moderation",
}
PATH_OF = {kind: path for path, kind in METERED.items()}


def int_field(body: dict[str, Any], *names: str) -> tuple[int | None, str | None]:
    """The first of `names` present, as a non-negative integer: (value, None), or
    (None, the name of the field that is not one)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None, name
        return value, None
    return None, None


def output_maximum(kind: str, body: dict[str, Any]) -> tuple[int | None, str | None]:
    """The output maximum a request names (see `int_field`); 0 for kinds with no output."""
    if kind == "chat":
        return int_field(body, "max_completion_tokens", "max_tokens")
    if kind == "completion":
        return int_field(body, "max_tokens")
    if kind == "responses":
        return int_field(body, "max_output_tokens")
    return 0, None


def prompt_tokens(kind: str, body: dict[str, Any], model: str) -> int:
    if kind == "chat":
        tokens = count_chat_prompt(body.get("messages"), model)
        if body.get("tools") or body.get("functions"):
            tokens += count_text(
                orjson.dumps(body.get("tools") or body.get("functions")).decode(), model
            )
        return tokens
    if kind == "completion":
        return count_input(body.get("prompt"), model)
    if kind in ("embedding", "moderation"):
        return count_input(body.get("input"), model)
    # responses
    return count_input(body.get("input"), model) + count_text(
        str(body.get("instructions") or ""), model
    )


def output_allowance(kind: str, body: dict[str, Any], max_out: int | None) -> tuple[int, int]:
    """Output tokens to reserve against budgets (the most the request can produce), and to
    count against TPM (what it asked for explicitly, as OpenAI counts)."""
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if kind == "completion":
        prompts = body.get("prompt")
        many = (
            len(prompts)
            if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)
            else 1
        )
        # The legacy endpoint's documented default is 16 tokens per choice.
        reserve = (max_out if max_out is not None else 16) * choices * many
    elif kind in ("chat", "responses"):
        default = settings.PROXY_DEFAULT_OUTPUT_TOKENS
        reserve = (max_out if max_out is not None else default) * choices
    else:
        reserve = 0
    return reserve, (max_out or 0) * choices
