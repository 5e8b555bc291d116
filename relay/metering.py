"""Pure functions that size a metered request: the most it can be billed for.

`size_request` bounds every token and fee OpenAI can bill for a request, from the request
alone (plus what the proxy recorded of the history it continues): text, tool definitions
and schemas, images, audio and files (relay.media), the history behind
`previous_response_id`, each extra model turn a built-in tool call causes, the tool fees
themselves, every output maximum times `n`. What cannot be bounded from the request (no
output maximum, a built-in tool without `max_tool_calls`, input the proxy cannot see on a
model whose context size it does not know) is, on a strict budget, a `Refused` naming what
to send; otherwise it is reserved at the documented defaults (PROXY_DEFAULT_OUTPUT_TOKENS,
PROXY_DEFAULT_TOOL_CALLS, TOOL_RESULT_TOKENS) and listed in `Sizing.assumed`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from django.conf import settings

from relay import media
from relay.tokens import count_input, count_text
from usage.pricing import Ceiling

# Metered POST endpoints and the kind of body each takes.
METERED = {
    "chat/completions": "chat",
    "completions": "completion",
    "embeddings": "embedding",
    "responses": "responses",
    "moderations": "moderation",
}
PATH_OF = {kind: path for path, kind in METERED.items()}

# OpenAI's own limits on integers (it answers 400 above them): no arithmetic on a client's
# number can overflow a column.
MAX_INT = 2_147_483_647
MAX_CHOICES = 128  # `n`
MAX_BEST_OF = 20
# Largest reservation the proxy makes for one request, in tokens: beyond it (a huge `n`
# times a huge maximum) the request is refused, whatever the key's limits.
MAX_REQUEST_TOKENS = 10**12
# "estimate" budgets: input tokens a built-in tool call is assumed to add to each further
# model turn (OpenAI bills web search on mini models a fixed 8,000 per call).
TOOL_RESULT_TOKENS = 8_000
# Tool definitions: OpenAI renders each one into the prompt with some framing of its own.
TOOL_OVERHEAD_TOKENS = 16
_SERVER_TOOLS = (
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "image_generation",
    "mcp",
)
_MEMORY = ("1g", "4g", "16g", "64g")
_IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024")
_IMAGE_QUALITIES = ("low", "medium", "high")
# Deepest nesting of lists and objects a metered body may have (400 beyond): far more than
# any real request (OpenAI allows 10 levels in a structured-output schema), far less than
# what re-encoding or tokenising could choke on.
MAX_NESTING = 64
_WALK_DEPTH = MAX_NESTING


class Refused(Exception):
    """The request is refused before it is sized (400/404 in OpenAI's shape)."""

    def __init__(self, message: str, *, param: str | None, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltinTools:
    """The server-side tools a Responses request enables, as they are billed."""

    search: str = ""  # the fee key: "web_search" or "web_search_preview"
    file_search: bool = False
    container_memory: str = ""  # code interpreter: "1g" … "64g"
    image_model: str = ""  # image generation: the image model, its quality, its size
    image_quality: str = "*"
    image_size: str = "*"
    partial_images: int = 0
    mcp: bool = False

    @property
    def any(self) -> bool:
        return (
            bool(self.search or self.file_search or self.container_memory or self.image_model)
            or self.mcp
        )

    def fee_keys(self) -> list[str]:
        keys = []
        if self.search:
            keys.append(self.search)
        if self.file_search:
            keys.append("file_search")
        if self.image_model:
            keys.append(
                f"image_generation:{self.image_model}:{self.image_quality}:{self.image_size}"
            )
        return keys


@dataclasses.dataclass(frozen=True, slots=True)
class Sizing:
    ceiling: Ceiling
    tools: BuiltinTools
    prompt_estimate: int  # the prompt as counted (what a cut stream is billed for)
    rate_tokens: int  # what counts against TPM: the prompt and the maximum asked for
    assumed: tuple[str, ...] = ()  # defaults reserved instead of a bound (estimate budgets)


def int_field(body: dict[str, Any], *names: str) -> tuple[int | None, str | None]:
    """The first of `names` present, as an integer from 0 to OpenAI's maximum: (value, None),
    or (None, the name of the field that is not one)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            return None, name
        return value, None
    return None, None


def bad_integer(body: dict[str, Any], name: str) -> Refused:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT:
        return Refused(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {MAX_INT}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return Refused(f"'{name}' must be a non-negative integer.", param=name, code="invalid_type")


def json_type(value: object) -> str:
    """A JSON value's type as OpenAI's messages name it ("a string", "an integer", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: object) -> Refused:
    # OpenAI's own wording, so a client sees the same text whether the proxy or OpenAI
    # refused it.
    return Refused(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


# Fields whose wrong type upstream would answer with a misleading message ("Missing required
# parameter" for a string `messages`): (kind, field, required, allowed types, OpenAI's name).
_TEXT_OR_ARRAY = ((str, list), "a string or an array")
_TYPED_FIELDS: dict[str, tuple[tuple[str, bool, tuple[type, ...], str], ...]] = {
    "chat": (("messages", True, (list,), "an array of objects"),),
    "completion": (("prompt", False, *_TEXT_OR_ARRAY),),
    "embedding": (("input", True, *_TEXT_OR_ARRAY),),
    "responses": (("input", False, *_TEXT_OR_ARRAY),),
    "moderation": (("input", True, *_TEXT_OR_ARRAY),),
}


def bad_type(kind: str, body: dict[str, Any]) -> Refused | None:
    """The first of `model`, `stream` and the kind's main input whose type is wrong, named
    as OpenAI names it; None if they are all right. (A missing `model` is the caller's.)"""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return _invalid_type("model", "a string", model)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _invalid_type("stream", "a boolean", stream)
    for name, required, types, expected in _TYPED_FIELDS.get(kind, ()):
        value = body.get(name)
        if value is None:
            if required:
                return Refused(
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
            continue
        if not isinstance(value, types):
            return _invalid_type(name, expected, value)
        if name == "messages":
            for i, message in enumerate(value):
                if not isinstance(message, dict):
                    return _invalid_type(f"messages[{i}]", "an object", message)
    return None


def output_maximum(kind: str, body: dict[str, Any]) -> tuple[int | None, str | None]:
    """The output maximum a request names (see `int_field`); 0 for kinds with no output."""
    if kind == "chat":
        return int_field(body, "max_completion_tokens", "max_tokens")
    if kind == "completion":
        return int_field(body, "max_tokens")
    if kind == "responses":
        return int_field(body, "max_output_tokens")
    return 0, None


def _count(body: dict[str, Any], name: str, limit: int, default: int = 1) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Refused(f"'{name}' must be a positive integer.", param=name, code="invalid_type")
    if value > limit:
        raise Refused(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {limit}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _json_tokens(value: object, model: str) -> int:
    if not value:
        return 0
    return count_text(orjson.dumps(value).decode(), model)


# Parts whose payload is not text: bounded by their own rules (relay.media), never tokenised
# as text. The keys that hold the payload are left out of the text walk.
_IMAGE_PARTS = ("image_url", "input_image", "computer_screenshot")
_PAYLOAD_KEYS = {
    "image_url": ("image_url",),
    "input_image": ("image_url",),
    "computer_screenshot": ("image_url",),
    "input_audio": ("input_audio", "data"),
    "input_file": ("file_data",),
    "file": ("file",),
    "image_generation_call": ("result",),
    "reasoning": ("encrypted_content",),
}
# Input that refers to what the proxy cannot see or measure: bounded by the model's context.
_UNSEEN = {
    "item_reference": "an item_reference",
    "image_generation_call": "an image generation call sent back as input",
}
MESSAGE_OVERHEAD_TOKENS = 4  # <|start|>role<|message|>…<|end|>, and a name
REPLY_PRIMING_TOKENS = 3


@dataclasses.dataclass
class _Input:
    text: list[str] = dataclasses.field(default_factory=list)
    items: int = 0  # messages and items, each with its framing
    media: int = 0  # tokens billed as text input (images, files)
    audio: int = 0
    unseen: str = ""  # what the proxy cannot know the size of


def _walk_input(value: object, model: str) -> _Input:
    """Everything a prompt (chat messages, a Responses input, instructions) is billed for:
    every string in it (message text, tool calls and their outputs, summaries: OpenAI bills
    them all as input), images, audio and files by their rules, and what cannot be seen.
    Walked without recursion, to a fixed depth (deeper bodies are refused beforehand)."""
    found = _Input()
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _WALK_DEPTH:
            continue
        if isinstance(item, str):
            found.text.append(item)
            continue
        if isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type") if isinstance(item.get("type"), str) else ""
        if "role" in item or depth <= 1:
            found.items += 1
        skip = _PAYLOAD_KEYS.get(kind, ())
        if kind in _IMAGE_PARTS or kind in ("input_audio", "input_file", "file"):
            _measure(item, kind, model, found)
        if kind in _UNSEEN:
            found.unseen = found.unseen or _UNSEEN[kind]
        if kind == "reasoning" and item.get("encrypted_content"):
            found.unseen = found.unseen or "encrypted reasoning items"
        audio = item.get("audio")
        if "role" in item and isinstance(audio, dict) and audio.get("id"):
            found.unseen = found.unseen or "an earlier answer's audio (audio.id)"
        for key, child in item.items():
            if key in skip or key == "type":
                continue
            if isinstance(child, str):
                if not child.startswith("data:"):
                    found.text.append(child)
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return found


def _measure(part: dict[str, Any], kind: str, model: str, found: _Input) -> None:
    """One image, clip or file: its most tokens by relay.media's rules."""
    if kind in _IMAGE_PARTS:
        url = part.get("image_url")
        detail = part.get("detail")
        if isinstance(url, dict):  # chat: {"url": ..., "detail": ...}
            detail = url.get("detail")
            url = url.get("url")
        if part.get("file_id") is not None:
            raise _owned_file("image")
        found.media += media.image_tokens(model, media.data_url_image_size(url), detail)
    elif kind == "input_audio":
        audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else part
        found.audio += media.audio_input_tokens(audio.get("data"))
    else:  # input_file (Responses) or file (chat)
        file = part.get("file") if kind == "file" and isinstance(part.get("file"), dict) else part
        if file.get("file_id") is not None:
            raise _owned_file("file")
        data = file.get("file_data")
        size = media.data_size(data)
        if size is None:
            found.unseen = found.unseen or "an input_file given by URL"
        elif media.is_pdf(data):
            # OpenAI bills a PDF's text and an image of each page: more than its bytes.
            found.unseen = found.unseen or "a PDF (its text and an image of each page)"
        else:
            found.media += size  # a token is at least one byte of text


def text_tokens(kind: str, body: dict[str, Any], model: str) -> int:
    """Prompt text of the kinds without media (completions, embeddings, moderations)."""
    if kind == "completion":
        return count_input(body.get("prompt"), model)
    return count_input(body.get("input"), model)


def _prompt(kind: str, body: dict[str, Any], model: str) -> tuple[int, _Input]:
    """(text tokens, what the walk found) of a chat or Responses prompt, with tool
    definitions and schemas."""
    if kind == "chat":
        found = _walk_input(body.get("messages"), model)
        definitions: list[object] = [body.get("tools") or body.get("functions")]
        schema = body.get("response_format")
        if isinstance(schema, dict) and schema.get("type") == "json_schema":
            definitions.append(schema)
    else:
        found = _walk_input([body.get("input"), body.get("instructions")], model)
        text = body.get("text")
        definitions = [body.get("tools")]
        if isinstance(text, dict) and isinstance(text.get("format"), dict):
            definitions.append(text["format"])
    tokens = count_text("\n".join(found.text), model)
    tokens += MESSAGE_OVERHEAD_TOKENS * found.items + REPLY_PRIMING_TOKENS
    for definition in definitions:
        if definition:
            many = len(definition) if isinstance(definition, list) else 1
            tokens += _json_tokens(definition, model) + TOOL_OVERHEAD_TOKENS * many
    return tokens, found


def _owned_file(what: str) -> Refused:
    # Files uploaded upstream belong to the one shared account, not to this user.
    return Refused(
        f"This proxy does not relay uploaded files yet, so an {what} cannot be given by "
        f"'file_id': send it inline (a base64 data URL).",
        param="file_id",
        code="unsupported_parameter",
    )


def too_deep(value: object, limit: int = MAX_NESTING) -> bool:
    """Whether a parsed body nests lists and objects deeper than `limit` (walked without
    recursion, so the check itself cannot exhaust the stack)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def tools_of_kind(body: dict[str, Any], kind: str) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, dict) and t.get("type") == kind for t in tools
    )


def builtin_tools(body: dict[str, Any]) -> BuiltinTools:
    """The server-side tools of a Responses request (none when tool_choice is "none")."""
    tools = body.get("tools")
    if not isinstance(tools, list) or body.get("tool_choice") == "none":
        return BuiltinTools()
    found: dict[str, Any] = {}
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in _SERVER_TOOLS:
            continue
        if kind.startswith("web_search"):
            preview = kind.startswith("web_search_preview")
            # A request with both kinds is bounded at the dearer fee key's price.
            found["search"] = "web_search_preview" if preview else found.get("search", "web_search")
        elif kind == "file_search":
            found["file_search"] = True
        elif kind == "code_interpreter":
            container = tool.get("container")
            memory = container.get("memory_limit") if isinstance(container, dict) else None
            found["container_memory"] = memory if memory in _MEMORY else "64g" if memory else "1g"
        elif kind == "image_generation":
            quality, size = tool.get("quality"), tool.get("size")
            partial = tool.get("partial_images")
            found.update(
                image_model=str(tool.get("model") or "gpt-image-1"),
                image_quality=quality if quality in _IMAGE_QUALITIES else "*",
                image_size=size if size in _IMAGE_SIZES else "*",
                partial_images=partial
                if isinstance(partial, int) and 0 <= partial <= 3
                else 3
                if partial is not None
                else 0,
            )
        elif kind == "mcp":
            found["mcp"] = True
    return BuiltinTools(**found)


def size_request(
    kind: str,
    body: dict[str, Any],
    model: str,
    *,
    max_out: int | None,
    strict: bool,
    history: int | None = 0,
    max_input: int | None = None,
    search_model: bool = False,
) -> Sizing:
    """Bound what the request can be billed for (see the module). `history`: the tokens of
    the response it continues (None: not known yet); `max_input`: the model's input limit, when the price table
    knows it; `search_model`: a Chat Completions model that searches the web on every call.
    Raises `Refused` for what cannot be bounded on a strict budget, or is not allowed."""
    assumed: list[str] = []

    def unbounded(param: str, message: str, default_note: str) -> None:
        if strict:
            raise Refused(message, param=param, code="missing_required_parameter")
        assumed.append(default_note)

    if kind in ("chat", "responses"):
        text, found = _prompt(kind, body, model)
    else:
        text, found = text_tokens(kind, body, model), _Input()
    if kind == "responses" and isinstance(body.get("prompt"), dict):
        found.unseen = found.unseen or "a stored prompt template ('prompt')"
    if kind == "responses" and tools_of_kind(body, "mcp"):
        found.unseen = found.unseen or "the tool list an MCP server sends"
    if search_model:
        found.unseen = found.unseen or "the web search results a search model reads"
    if history is None:
        found.unseen = found.unseen or "a previous response whose usage is not recorded yet"
        history = 0
    per_turn = text + found.media + history
    if found.unseen:
        if max_input is not None:
            per_turn = max_input
        else:
            unbounded(
                "input",
                f"This key's budget is strict and the proxy cannot bound this request's input: "
                f"it holds {found.unseen}, and the context size of '{model}' is not in the "
                f"price table. Send the content inline.",
                f"{found.unseen} counted as {TOOL_RESULT_TOKENS} tokens",
            )
            per_turn += TOOL_RESULT_TOKENS
    if max_input is not None:
        per_turn = min(per_turn, max_input)

    # Built-in tools: each call may be another model turn, billed the context again.
    tools = builtin_tools(body) if kind == "responses" else BuiltinTools()
    calls = 0
    if tools.any:
        given, bad = int_field(body, "max_tool_calls")
        if bad is not None:
            raise bad_integer(body, bad)
        if given is not None:
            calls = given
        else:
            calls = settings.PROXY_DEFAULT_TOOL_CALLS
            unbounded(
                "max_tool_calls",
                "This key's budget is strict and built-in tool calls are billed per call: set "
                "'max_tool_calls' so the proxy can reserve their cost.",
                f"{calls} built-in tool calls (PROXY_DEFAULT_TOOL_CALLS)",
            )
    # Each turn after a tool call reads at most the model's whole context; without one
    # known, the estimate's allowance for tool results.
    if calls and max_input is None:
        unbounded(
            "model",
            f"This key's budget is strict and the context size of '{model}' is not in the "
            f"price table, so what its tool calls read cannot be bounded.",
            f"{TOOL_RESULT_TOKENS} tokens of results per tool call",
        )
    extra_turn = max_input if max_input is not None else per_turn + TOOL_RESULT_TOKENS
    input_tokens = per_turn + calls * extra_turn

    # Output: every maximum, times every choice.
    if kind == "completion":
        choices = max(_count(body, "n", MAX_CHOICES), _count(body, "best_of", MAX_BEST_OF))
        prompts = body.get("prompt")
        many = (
            len(prompts)
            if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)
            else 1
        )
        # The legacy endpoint's documented default is 16 tokens per choice.
        output = (max_out if max_out is not None else 16) * choices * many
        asked = (max_out or 0) * choices * many
    elif kind in ("chat", "responses"):
        choices = _count(body, "n", MAX_CHOICES) if kind == "chat" else 1
        if max_out is None:
            name = "max_completion_tokens" if kind == "chat" else "max_output_tokens"
            unbounded(
                name,
                f"This key's budget is strict: set '{name}' so the proxy can reserve the most "
                f"this request can cost.",
                f"{settings.PROXY_DEFAULT_OUTPUT_TOKENS} output tokens "
                f"(PROXY_DEFAULT_OUTPUT_TOKENS)",
            )
        output = (max_out if max_out is not None else settings.PROXY_DEFAULT_OUTPUT_TOKENS) * (
            choices
        )
        asked = (max_out or 0) * choices
    else:
        output = asked = 0
    modalities = body.get("modalities")
    audio_out = kind == "chat" and isinstance(modalities, list) and "audio" in modalities

    fees: dict[str, int] = {}
    if calls:
        for key in tools.fee_keys():
            fees[key] = calls  # each call may be the dearest tool's
        if tools.container_memory:
            fees[f"code_interpreter:{tools.container_memory}"] = 1  # one container per request
        if tools.image_model and tools.partial_images:
            fees[f"image_partial:{tools.image_model}"] = calls * tools.partial_images
    if search_model:
        fees["search_model"] = 1
    ceiling = Ceiling(
        input=input_tokens,
        audio_input=found.audio,
        output=output,
        audio_output=audio_out,
        tool_calls=fees,
    )
    if ceiling.tokens > MAX_REQUEST_TOKENS:
        raise Refused(
            f"This request could be billed for up to {ceiling.tokens} tokens, more than this "
            f"proxy reserves for one request ({MAX_REQUEST_TOKENS}): lower 'n' or the output "
            f"maximum.",
            param="n" if choices_of(body) > 1 else None,
            code="request_too_large",
        )
    prompt = text + found.media + found.audio + history
    return Sizing(
        ceiling=ceiling,
        tools=tools,
        prompt_estimate=prompt,
        rate_tokens=prompt + asked,
        assumed=tuple(assumed),
    )


def choices_of(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
