"""POST /v1/images/generations, /v1/images/edits and /v1/images/variations, in OpenAI's
shapes; and the multipart forms the last two (and the audio uploads) arrive as.

What the fake assumes OpenAI bills for images:

- DALL·E (dall-e-2, dall-e-3): per image, by size and quality; the answer has no usage. The
  bill counts `images`, with `image_size` and `image_quality` (dall-e-2 is always
  "standard"). Variations are dall-e-2 only.
- GPT image models (gpt-image-*, chatgpt-image-latest): tokens. Input: the prompt's o200k
  tokens (`text_tokens`) and, for an edit, each input image's (`image_tokens`): scaled down
  to fit 2048×2048, then down so its shorter side is 768 px (never up), 85 + 170 for each
  512-px tile covering it; with `input_fidelity: "high"` each image costs 4160 more when
  square, 6240 more otherwise. A mask is not billed. Output: n × the gpt-image-1 table by
  quality and size (low 272 / 408 / 400, medium 1056 / 1584 / 1568, high 4160 / 6240 / 6208
  for 1024x1024 / 1024x1536 / 1536x1024), for every GPT image model; `quality: "auto"` is
  medium and `size: "auto"` 1024x1024. In a stream each partial image is 100 output tokens
  more. gpt-image-1 and gpt-image-1-mini report no `output_tokens_details`; the newer models
  report it, all of it image tokens. The bill has the input as prompt tokens and the output as
  completion tokens, and again as `text_input_tokens`, `image_input_tokens` and
  `image_output_tokens`, with `images`, `image_size` and `image_quality` (the resolved ones).
- A stream cut or ended early bills the partial images and images whose event went out.
- The model when none is given: dall-e-2, unless a parameter only the GPT image models take is
  (background, moderation, output_format, output_compression, input_fidelity, stream,
  partial_images): then gpt-image-1, as OpenAI's reference described it. SDK 3.x asks for a
  model and calls DALL·E retired; the fake still serves it, and knows no size but the standard
  ones, nor the `xhigh` / `max` qualities, for which it has no token table (400).

The images are black: a valid PNG of the answered size (cached per size); for jpeg or webp
output only a header that carries the size. A `url` answer points at
https://fake-openai.invalid/images/<id>.png, which serves nothing.

A multipart request carries its knobs as `fake[name]` fields (the SDK's `extra_body` sends
them so); the gateway reads only JSON, so `read_form` reads them.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any

from aiohttp import web

from fakeopenai.counting import count_o200k
from fakeopenai.errors import OpenAIError, requested_failure
from fakeopenai.images import image_dimensions, tile_tokens
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import KNOBS, TAB, ident, json_body, json_response, sse_event
from fakeopenai.state import Tab
from fakeopenai.streaming import write_stream

DALL_E_2, DALL_E_3, GPT_IMAGE_DEFAULT = "dall-e-2", "dall-e-3", "gpt-image-1"
URL_ORIGIN = "https://fake-openai.invalid/images/"
PARTIAL_IMAGE_TOKENS = 100
HIGH_FIDELITY_TOKENS = (4160, 6240)  # a square image, any other
MAX_IMAGES = 10
MAX_EDIT_IMAGES = 16
DALL_E_MAX_BYTES = 4 * 1024**2
GPT_IMAGE_MAX_BYTES = 50 * 1024**2
_PROMPT_LIMITS = {DALL_E_2: 1000, DALL_E_3: 4000}
_GPT_PROMPT_LIMIT = 32000
_SIZES = {
    DALL_E_2: ("256x256", "512x512", "1024x1024"),
    DALL_E_3: ("1024x1024", "1792x1024", "1024x1792"),
}
_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_QUALITIES = {DALL_E_2: ("standard", "auto"), DALL_E_3: ("standard", "hd", "auto")}
_GPT_QUALITIES = ("low", "medium", "high", "auto")
# Output tokens of one image (the gpt-image-1 guide's table), by quality and size.
_OUTPUT_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
# Only the GPT image models take these; given with no model, they select gpt-image-1.
_GPT_ONLY = (
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "input_fidelity",
    "partial_images",
    "stream",
)
_DALL_E_ONLY = ("response_format", "style")
_INT_FIELDS = ("n", "output_compression", "partial_images")
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # by the IHDR's colour type


# -- multipart forms ------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart form."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class Form:
    """A multipart form's parts, in order; a name may repeat (`image[]`)."""

    parts: tuple[tuple[str, str | Upload], ...]

    def all(self, *names: str) -> list[str | Upload]:
        return [value for name, value in self.parts if name in names]

    def uploads(self, *names: str) -> list[Upload]:
        return [value for value in self.all(*names) if isinstance(value, Upload)]

    def params(self) -> dict[str, Any]:
        """The text fields as a body: `a[]` repeated as a list, `a[b]` as {"a": {"b": ...}}.
        Numbers stay strings: the handler says which fields are numbers."""
        params: dict[str, Any] = {}
        for name, value in self.parts:
            if isinstance(value, Upload):
                continue
            if name.endswith("[]"):
                params.setdefault(name[:-2], []).append(value)
            elif (nested := re.fullmatch(r"([^\[\]]+)\[([^\[\]]+)\]", name)) is not None:
                inner = params.setdefault(nested[1], {})
                if isinstance(inner, dict):
                    inner[nested[2]] = value
            else:
                params[name] = value
        return params


def _bad_form(reason: str) -> OpenAIError:
    return OpenAIError(400, f"Could not parse multipart form: {reason}.")


def _header_params(value: str) -> Message:
    message = Message()
    message["content-type"] = value
    return message


def parse_form(content_type: str, raw: bytes) -> Form:
    """A multipart/form-data body (RFC 7578), parsed from bytes already read."""
    boundary = _header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise _bad_form("no boundary in the Content-Type header")
    delimiter = b"\r\n--" + boundary.encode()
    pieces = (b"\r\n" + raw).split(delimiter)
    parts: list[tuple[str, str | Upload]] = []
    closed = False
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        head_end = piece.find(b"\r\n\r\n")
        if head_end < 0:
            raise _bad_form("a part has no header")
        headers = BytesHeaderParser().parsebytes(piece[:head_end].lstrip(b" \t\r\n") + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _bad_form("a part has no name")
        data = piece[head_end + 4 :]
        filename = headers.get_filename()
        if filename is not None:
            parts.append((name, Upload(filename, headers.get("content-type"), data)))
        else:
            try:
                parts.append((name, data.decode()))
            except UnicodeDecodeError:
                raise _bad_form(f"field '{name}' is not UTF-8 text") from None
    if not closed:
        raise _bad_form("the closing boundary is missing")
    return Form(tuple(parts))


def _knob_value(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


async def read_form(request: web.Request) -> Form:
    """The request's multipart form, its `fake[...]` knobs put on the request (a requested
    failure raised), as the gateway does for a JSON body."""
    if request.content_type != "multipart/form-data":
        raise OpenAIError(
            400,
            f"Invalid Content-Type header ({request.content_type}), expected "
            "multipart/form-data. (HINT: If you're using curl, you can pass -H "
            "'Content-Type: multipart/form-data')",
        )
    form = parse_form(request.headers.get("Content-Type", ""), await request.read())
    raw_knobs = form.params().get("fake")
    if isinstance(raw_knobs, dict):
        knobs = Knobs.from_body({"fake": {k: _knob_value(v) for k, v in raw_knobs.items()}})
        request[KNOBS] = knobs
        if knobs.fail_status is not None:
            raise requested_failure(knobs)
    return form


def form_numbers(params: dict[str, Any], ints: Sequence[str], floats: Sequence[str] = ()) -> None:
    """Make the form's number and boolean fields what a JSON body would carry; a field that
    is not a number stays a string, for the check of its type to refuse."""
    for name in ints:
        if isinstance(params.get(name), str) and re.fullmatch(r"-?[0-9]+", params[name]):
            params[name] = int(params[name])
    for name in floats:
        if isinstance(params.get(name), str):
            try:
                params[name] = float(params[name])
            except ValueError:
                pass
    if params.get("stream") in ("true", "false"):
        params["stream"] = params["stream"] == "true"


# -- checks in OpenAI's words ---------------------------------------------------------------


def _listed(values: Sequence[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def invalid_value(param: str, value: object, supported: Sequence[str]) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid value: '{value}'. Supported values are: {_listed(supported)}.",
        param=param,
        code="invalid_value",
    )


def _type_name(value: object) -> str:
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
    return "an object" if isinstance(value, dict) else "null"


def invalid_type(param: str, value: object, expected: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def missing(param: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def unknown_parameter(param: str) -> OpenAIError:
    return OpenAIError(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def required_text(params: dict[str, Any], name: str, limit: int | None = None) -> str:
    value = params.get(name)
    if value is None:
        raise missing(name)
    if not isinstance(value, str):
        raise invalid_type(name, value, "a string")
    if not value:
        raise OpenAIError(
            400,
            f"Invalid '{name}': empty string. Expected a string with minimum length 1, but got "
            "an empty string instead.",
            param=name,
            code="empty_string",
        )
    if limit is not None and len(value) > limit:
        raise OpenAIError(
            400,
            f"Invalid '{name}': string too long. Expected a string with maximum length {limit}, "
            f"but got a string with length {len(value)} instead.",
            param=name,
            code="string_above_max_length",
        )
    return value


def integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(name, value, "an integer")
    if value < low:
        raise _out_of_range(name, value, "below minimum", f">= {low}")
    if value > high:
        raise _out_of_range(name, value, "above maximum", f"<= {high}")
    return value


def _out_of_range(name: str, value: object, where: str, bound: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid '{name}': integer {where} value. Expected a value {bound}, but got {value} "
        "instead.",
        param=name,
        code=f"integer_{where.replace(' ', '_')}_value",
    )


def choice(params: dict[str, Any], name: str, supported: Sequence[str], default: str) -> str:
    value = params.get(name)
    if value is None:
        return default
    if value not in supported:
        raise invalid_value(name, value, supported)
    return value


# -- what is asked ---------------------------------------------------------------------------


def is_gpt_image(model: str) -> bool:
    return model.startswith(("gpt-image-", "chatgpt-image-"))


def _reports_output_details(model: str) -> bool:
    return is_gpt_image(model) and not (model == "gpt-image-1" or model.startswith("gpt-image-1-"))


@dataclass(frozen=True)
class ImageAsk:
    """An image request, checked, its defaults resolved."""

    model: str
    prompt: str
    n: int
    size: str
    quality: str
    response_format: str  # "url" or "b64_json"; GPT image models always b64_json
    output_format: str
    background: str | None  # GPT image models: "transparent" or "opaque"
    stream: bool
    partial_images: int

    @property
    def gpt(self) -> bool:
        return is_gpt_image(self.model)

    @property
    def dimensions(self) -> tuple[int, int]:
        width, _, height = self.size.partition("x")
        return int(width), int(height)


def _model(params: dict[str, Any], *, allowed: Sequence[str] | None = None) -> str:
    model = params.get("model")
    if model is None:
        gpt_only = any(params.get(name) is not None for name in _GPT_ONLY)
        return GPT_IMAGE_DEFAULT if gpt_only and allowed is None else DALL_E_2
    if not isinstance(model, str):
        raise invalid_type("model", model, "a string")
    if allowed is not None and model not in allowed:
        raise invalid_value("model", model, allowed)
    if model not in _SIZES and not is_gpt_image(model):
        raise invalid_value("model", model, ("gpt-image-1", "gpt-image-1.5", DALL_E_2, DALL_E_3))
    return model


def _check_family_params(params: dict[str, Any], model: str) -> None:
    """A parameter only the other family takes is refused (OpenAI: "Unknown parameter")."""
    foreign = _DALL_E_ONLY if is_gpt_image(model) else _GPT_ONLY
    for name in foreign:
        if params.get(name) is not None and not (name == "stream" and params[name] is False):
            raise unknown_parameter(name)
    if params.get("style") is not None and model != DALL_E_3:
        raise unknown_parameter("style")


def _gpt_output(params: dict[str, Any]) -> tuple[str, str | None]:
    output_format = choice(params, "output_format", ("png", "webp", "jpeg"), "png")
    background = choice(params, "background", ("transparent", "opaque", "auto"), "auto")
    if background == "transparent" and output_format == "jpeg":
        raise OpenAIError(
            400,
            "Transparent background is not supported for jpeg output format. Use png or webp.",
            param="background",
            code="invalid_value",
        )
    compression = integer(params, "output_compression", 100, 0, 100)
    if compression != 100 and output_format == "png":
        raise OpenAIError(
            400,
            "Compression less than 100 is only supported for jpeg and webp output formats.",
            param="output_compression",
            code="invalid_value",
        )
    choice(params, "moderation", ("low", "auto"), "auto")
    return output_format, "transparent" if background == "transparent" else "opaque"


def image_ask(params: dict[str, Any], *, edit: bool) -> ImageAsk:
    """A generation or an edit, checked parameter by parameter."""
    model = _model(params)
    gpt = is_gpt_image(model)
    _check_family_params(params, model)
    prompt = required_text(params, "prompt", _GPT_PROMPT_LIMIT if gpt else _PROMPT_LIMITS[model])
    n = integer(params, "n", 1, 1, MAX_IMAGES)
    if model == DALL_E_3 and n != 1:
        raise OpenAIError(
            400,
            "Invalid 'n': dall-e-3 only supports n=1.",
            param="n",
            code="integer_above_max_value",
        )
    if edit and model == DALL_E_3:
        raise invalid_value("model", model, (DALL_E_2, "gpt-image-1", "gpt-image-1.5"))
    sizes = _GPT_SIZES if gpt else _SIZES[model]
    size = choice(params, "size", sizes, "auto" if gpt else "1024x1024")
    quality = choice(params, "quality", _GPT_QUALITIES if gpt else _QUALITIES[model], "auto")
    if gpt:
        output_format, background = _gpt_output(params)
        stream = params.get("stream") is True
        partial_images = integer(params, "partial_images", 0, 0, 3)
        return ImageAsk(
            model=model,
            prompt=prompt,
            n=n,
            size="1024x1024" if size == "auto" else size,
            quality="medium" if quality == "auto" else quality,
            response_format="b64_json",
            output_format=output_format,
            background=background,
            stream=stream,
            partial_images=partial_images if stream else 0,
        )
    if model == DALL_E_3:
        choice(params, "style", ("vivid", "natural"), "vivid")
    return ImageAsk(
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        quality="standard" if quality == "auto" else quality,
        response_format=choice(params, "response_format", ("url", "b64_json"), "url"),
        output_format="png",
        background=None,
        stream=False,
        partial_images=0,
    )


# -- the images made ------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@functools.cache
def black_png(width: int, height: int) -> bytes:
    """A valid black greyscale PNG: its zero rows compress to almost nothing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(height * (width + 1)), 9)  # a filter byte then pixels, per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_head(width: int, height: int) -> bytes:
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    return (
        b"\xff\xd8\xff\xe0"
        + struct.pack(">H", len(app0) + 2)
        + app0
        + b"\xff\xc0"
        + struct.pack(">H", len(sof0) + 2)
        + sof0
        + b"\xff\xd9"
    )


def _webp_head(width: int, height: int) -> bytes:
    vp8x = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


@functools.cache
def image_b64(output_format: str, width: int, height: int) -> str:
    if output_format == "jpeg":
        data = _jpeg_head(width, height)
    elif output_format == "webp":
        data = _webp_head(width, height)
    else:
        data = black_png(width, height)
    return base64.b64encode(data).decode()


def _image_entry(ask: ImageAsk) -> dict[str, Any]:
    if ask.response_format == "url":
        entry: dict[str, Any] = {"url": f"{URL_ORIGIN}{ident('img-', 24)}.png"}
    else:
        entry = {"b64_json": image_b64(ask.output_format, *ask.dimensions)}
    if ask.model == DALL_E_3:
        entry["revised_prompt"] = ask.prompt
    return entry


# -- billing and answering ------------------------------------------------------------------


def output_tokens_per_image(ask: ImageAsk) -> int:
    return _OUTPUT_TOKENS[ask.quality][ask.size]


def input_image_tokens(width: int, height: int, fidelity: str) -> int:
    tokens = tile_tokens(width, height)
    if fidelity == "high":
        tokens += HIGH_FIDELITY_TOKENS[0 if width == height else 1]
    return tokens


def _usage(ask: ImageAsk, knobs: Knobs, text: int, image: int, output: int) -> dict[str, Any]:
    prompt, output = knobs.reported_prompt(text + image), knobs.reported_output(output)
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": output,
        "total_tokens": prompt + output,
    }
    if _reports_output_details(ask.model):
        usage["output_tokens_details"] = {"text_tokens": 0, "image_tokens": output}
    return usage


def _charge_images(tab: Tab, ask: ImageAsk, usage: dict[str, Any] | None) -> None:
    tab.images, tab.image_size, tab.image_quality = ask.n, ask.size, ask.quality
    if usage is None:
        return
    details = usage["input_tokens_details"]
    tab.charge(prompt=usage["input_tokens"], output=usage["output_tokens"])
    tab.text_input_tokens, tab.image_input_tokens = details["text_tokens"], details["image_tokens"]
    tab.image_output_tokens = usage["output_tokens"]


async def _answer(
    request: web.Request, ask: ImageAsk, *, image_tokens: int, kind: str
) -> web.StreamResponse:
    """Bill and answer a checked generation or edit; `kind` names its stream events."""
    knobs = request[KNOBS]
    tab = request[TAB]
    tab.model, tab.stream = ask.model, ask.stream
    created = int(time.time())
    if not ask.gpt:
        _charge_images(tab, ask, None)
        return json_response(
            {"created": created, "data": [_image_entry(ask) for _ in range(ask.n)]}
        )
    per_image = output_tokens_per_image(ask) + PARTIAL_IMAGE_TOKENS * ask.partial_images
    usage = _usage(ask, knobs, count_o200k(ask.prompt), image_tokens, ask.n * per_image)
    _charge_images(tab, ask, usage)
    shown = {
        "background": ask.background,
        "output_format": ask.output_format,
        "quality": ask.quality,
        "size": ask.size,
    }
    if ask.stream:
        return await _stream(request, ask, knobs, kind, shown, usage, created)
    result: dict[str, Any] = {
        "created": created,
        "data": [_image_entry(ask) for _ in range(ask.n)],
        **shown,
    }
    if not knobs.no_usage:
        result["usage"] = usage
        tab.usage_reported = True
    return json_response(result)


async def _stream(
    request: web.Request,
    ask: ImageAsk,
    knobs: Knobs,
    kind: str,
    shown: dict[str, Any],
    usage: dict[str, Any],
    created: int,
) -> web.StreamResponse:
    """Each image's partial images, then its completed event; every completed event carries
    the whole request's usage (the fake's reading: a proxy should not add them up)."""
    b64 = image_b64(ask.output_format, *ask.dimensions)
    events: list[bytes] = []
    tokens: list[int] = []  # the output tokens each event brings
    completed_after: list[int] = []  # how many events had gone out with each completed one
    for _ in range(ask.n):
        for index in range(ask.partial_images):
            partial = {
                "type": f"{kind}.partial_image",
                "b64_json": b64,
                "created_at": created,
                "partial_image_index": index,
                **shown,
            }
            events.append(sse_event(partial))
            tokens.append(PARTIAL_IMAGE_TOKENS)
        completed = {"type": f"{kind}.completed", "b64_json": b64, "created_at": created, **shown}
        if not knobs.no_usage:
            completed["usage"] = usage
        events.append(sse_event(completed))
        tokens.append(output_tokens_per_image(ask))
        completed_after.append(len(events))
    cumulative = [0]
    for count in tokens:
        cumulative.append(cumulative[-1] + count)
    tab = request[TAB]
    tab.progress = lambda frames: cumulative[min(frames, len(tokens))]
    tab.image_progress = lambda frames: sum(1 for end in completed_after if end <= frames)
    # The last completed event is the tail: it carries the usage a proxy reads.
    return await write_stream(
        request,
        knobs,
        head=[],
        content=events[:-1],
        tail=events[-1:],
        usage_at=None if knobs.no_usage else 0,
    )


async def generations(request: web.Request) -> web.StreamResponse:
    body = json_body(request)
    return await _answer(
        request, image_ask(body, edit=False), image_tokens=0, kind="image_generation"
    )


def _png_only(upload: Upload, param: str) -> tuple[int, int]:
    size = image_dimensions(upload.data) if upload.data[:4] == b"\x89PNG" else None
    if size is None or len(upload.data) >= DALL_E_MAX_BYTES:
        raise OpenAIError(
            400,
            f"Invalid input image - Uploaded {param} must be a PNG and less than 4 MB.",
            param=param,
            code="invalid_image_format",
        )
    return size


def _square_png(upload: Upload, param: str = "image") -> tuple[int, int]:
    width, height = _png_only(upload, param)
    if width != height:
        raise OpenAIError(
            400,
            f"Invalid input image - {param} must be square, got {width}x{height}.",
            param=param,
            code="invalid_image_format",
        )
    return width, height


def _gpt_image_size(upload: Upload, index: int) -> tuple[int, int]:
    size = image_dimensions(upload.data) if upload.data[:3] != b"GIF" else None
    if size is None or 0 in size or len(upload.data) >= GPT_IMAGE_MAX_BYTES:
        raise OpenAIError(
            400,
            f"Invalid image file or mode for image {index + 1}, please check your image file. "
            "Supported formats are png, webp and jpg, each less than 50 MB.",
            param="image",
            code="invalid_image_file",
        )
    return size


def _edit_images(form: Form, ask: ImageAsk, params: dict[str, Any]) -> int:
    """Check the images and mask of an edit; the input image tokens they cost."""
    images = form.uploads("image", "image[]")
    if not images:
        raise missing("image")
    mask = form.uploads("mask")
    if not ask.gpt:
        if len(images) > 1:
            raise OpenAIError(
                400, "dall-e-2 edits take one image.", param="image", code="invalid_value"
            )
        size = _square_png(images[0])
        # Without a mask the image's own transparency says where to edit.
        mode = _PNG_MODES.get(images[0].data[25], "unknown")
        if not mask and mode not in ("RGBA", "LA", "L"):
            raise OpenAIError(
                400,
                f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {mode}.",
                param="image",
                code="invalid_image_format",
            )
        if mask and _png_only(mask[0], "mask") != size:
            raise _mask_mismatch()
        return 0
    if len(images) > MAX_EDIT_IMAGES:
        raise OpenAIError(
            400,
            f"Invalid 'image': too many images. Expected at most {MAX_EDIT_IMAGES}, but got "
            f"{len(images)}.",
            param="image",
            code="array_above_max_length",
        )
    sizes = [_gpt_image_size(upload, index) for index, upload in enumerate(images)]
    if mask and _png_only(mask[0], "mask") != sizes[0]:
        raise _mask_mismatch()
    fidelity = choice(params, "input_fidelity", ("low", "high"), "low")
    if params.get("input_fidelity") is not None and ask.model.startswith("gpt-image-2"):
        raise unknown_parameter("input_fidelity")
    if fidelity == "high" and ask.model.startswith("gpt-image-1-mini"):
        raise invalid_value("input_fidelity", fidelity, ("low",))
    return sum(input_image_tokens(width, height, fidelity) for width, height in sizes)


def _mask_mismatch() -> OpenAIError:
    return OpenAIError(
        400,
        "Invalid mask image - mask and image must have the same dimensions.",
        param="mask",
        code="invalid_image_format",
    )


def _form_params(form: Form, tab: Tab) -> dict[str, Any]:
    params = form.params()
    params.pop("fake", None)
    form_numbers(params, _INT_FIELDS)
    tab.model = params.get("model") if isinstance(params.get("model"), str) else None
    tab.stream = params.get("stream") is True
    return params


async def edits(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    params = _form_params(form, request[TAB])
    ask = image_ask(params, edit=True)
    image_tokens = _edit_images(form, ask, params)
    return await _answer(request, ask, image_tokens=image_tokens, kind="image_edit")


async def variations(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    params = _form_params(form, request[TAB])
    model = _model(params, allowed=(DALL_E_2,))
    for name in ("prompt", *_GPT_ONLY, "quality", "style"):
        if params.get(name) is not None:
            raise unknown_parameter(name)
    images = form.uploads("image")
    if not images:
        raise missing("image")
    _square_png(images[0])
    ask = ImageAsk(
        model=model,
        prompt="",
        n=integer(params, "n", 1, 1, MAX_IMAGES),
        size=choice(params, "size", _SIZES[DALL_E_2], "1024x1024"),
        quality="standard",
        response_format=choice(params, "response_format", ("url", "b64_json"), "url"),
        output_format="png",
        background=None,
        stream=False,
        partial_images=0,
    )
    return await _answer(request, ask, image_tokens=0, kind="image_variation")
