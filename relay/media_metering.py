"""Images and audio: what a request can cost at most, and what its answer says it cost.

Routes and what they are billed by (the price table's rows; see README "Routes"):

- `images/generations`, `images/edits`, `images/variations`
  - GPT image models: the prompt's text tokens at the text input rate, input images (edits)
    at the image input rate, the images made at the image output rate, all from the
    answer's `usage`. Reserved: the prompt's tokens, each input image at its tile count plus
    the high-fidelity extra (4,160 square / 6,240 other), and `n` images at the output
    tokens of their quality and size (OpenAI's table; `auto` at the dearest; a size outside
    the table by its area), plus 100 tokens per partial image.
  - DALL·E: a fee per image by quality and size (the fee table, tool `image`), for the
    images returned; reserved for `n`.
- `audio/speech`: tts-1 / tts-1-hd per character of `input` (known before it is sent);
  token models (gpt-4o-mini-tts) the input's text tokens and the audio's output tokens,
  from the `speech.audio.done` usage of an SSE answer, else estimated from the audio
  returned (wav / pcm: its exact length; compressed formats: the input's length at
  15 characters a second) at 20 audio tokens a second. Reserved: 20 tokens a second of the
  longest the input can take to say (4 characters a second at `speed`).
- `audio/transcriptions`, `audio/translations`: whisper-1 per second of audio (the answer's
  `usage.seconds` or `duration`, else the file's length), gpt-4o transcribe models from the
  answer's token usage (else the file's length at 10 tokens a second and the transcript's
  tokens). Reserved: the file's length (read by tinytag; a file it cannot read at the
  lowest bitrate, 1,000 bytes a second), its audio tokens, and 2,000 output tokens (the
  transcribe models' maximum output).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Any

from relay import media
from relay.metering import MAX_INT, Refused
from relay.multipart import BadForm, Form, Upload, parse
from relay.tokens import count_text
from usage.pricing import Ceiling, Price, TokenUsage

ROUTES = {
    "images/generations": "image_generation",
    "images/edits": "image_edit",
    "images/variations": "image_variation",
    "audio/speech": "speech",
    "audio/transcriptions": "transcription",
    "audio/translations": "translation",
}
MULTIPART = ("image_edit", "image_variation", "transcription", "translation")
STREAMABLE = ("image_generation", "image_edit", "transcription")

# gpt-image output tokens per image (platform.openai.com/docs/guides/image-generation,
# "Cost and latency"): by quality, for 1024x1024, 1024x1536, 1536x1024.
IMAGE_OUTPUT_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
_LARGEST_IMAGE_TOKENS = 6240
_LARGEST_TABLE_AREA = 1024 * 1536
PARTIAL_IMAGE_TOKENS = 100
# Input images at high fidelity add these (the same guide, "Input fidelity").
_FIDELITY_SQUARE, _FIDELITY_OTHER = 4160, 6240
# gpt-image-1 and -mini default to low fidelity; the others always keep input images whole.
_LOW_FIDELITY_BY_DEFAULT = ("gpt-image-1", "gpt-image-1-mini")
_GPT_IMAGE_ONLY = (
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "input_fidelity",
    "stream",
    "partial_images",
)
_SIZE = re.compile(r"(\d{2,5})x(\d{2,5})")
MAX_IMAGES = 10
PROMPT_OVERHEAD_TOKENS = 16
# Speech: audio tokens per second said; the slowest an input is said at speed 1.
SPEECH_TOKENS_PER_SECOND = 20
_SLOWEST_CHARS_PER_SECOND = 4
_TYPICAL_CHARS_PER_SECOND = 15
_PCM_BYTES_PER_SECOND = 24_000 * 2  # OpenAI's pcm: 24 kHz, 16-bit, mono
# Transcription: the most a transcribe model writes, and audio tokens per second heard.
TRANSCRIPT_MAX_TOKENS = 2000
MAX_AUDIO_BYTES = 25 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class MediaRequest:
    kind: str
    model: str
    body: dict[str, Any]  # the JSON body, or the form's fields (last value of each)
    form: Form | None
    stream: bool
    ceiling: Ceiling
    prompt_estimate: int  # text input tokens counted (what an answer without usage is billed)
    per_image_fee: str = ""  # DALL·E: the fee key of one image
    audio_seconds: float | None = None  # an upload's length, when it could be read
    characters: int = 0

    @property
    def response_format(self) -> str:
        return str(self.body.get("response_format") or "")


def is_gpt_image(model: str) -> bool:
    return not model.startswith("dall-e")


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise Refused(
            f"Invalid '{name}': {value} is not between {low} and {high}.",
            param=name,
            code="invalid_value",
        )
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Refused(f"'{name}' must be a number.", param=name, code="invalid_type") from None
    if not math.isfinite(number) or number <= 0:
        raise Refused(f"Invalid '{name}': {value}.", param=name, code="invalid_value")
    return number


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise Refused(
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
        return ""
    if not isinstance(value, str):
        raise Refused(f"'{name}' must be a string.", param=name, code="invalid_type")
    return value


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _fields(form: Form) -> dict[str, Any]:
    return {name: values[-1] for name, values in form.fields.items()}


def read_body(kind: str, raw: bytes, content_type: str, parsed: object) -> tuple[dict, Form | None]:
    """The request's parameters: the JSON object (`parsed`), or the multipart form's fields."""
    if kind not in MULTIPART:
        if not isinstance(parsed, dict):
            raise Refused(
                "We could not parse the JSON body of your request. The body must be a JSON object.",
                param=None,
                code="invalid_json",
            )
        return parsed, None
    try:
        form = parse(raw, content_type)
    except BadForm as exc:
        raise Refused(
            f"This endpoint takes a multipart/form-data upload: {exc}.",
            param=None,
            code="invalid_multipart",
        ) from None
    return _fields(form), form


def model_of(kind: str, body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        if kind in ("image_generation", "image_edit"):
            # OpenAI's default, unless a parameter only GPT image models take is given.
            return "gpt-image-1" if any(k in body for k in _GPT_IMAGE_ONLY) else "dall-e-2"
        if kind == "image_variation":
            return "dall-e-2"
        raise Refused("You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise Refused("'model' must be a string.", param="model", code="invalid_type")
    return model


# -- sizing ----------------------------------------------------------------------------------


def size(
    kind: str, model: str, body: dict[str, Any], form: Form | None, price: Price | None
) -> MediaRequest:
    """The request's most cost (its ceiling), or Refused for a parameter it cannot be sized by."""
    if kind.startswith("image_"):
        return _size_image(kind, model, body, form)
    if kind == "speech":
        return _size_speech(model, body, price)
    return _size_transcription(kind, model, body, form, price)


def image_output_tokens(quality: str, size: str) -> int:
    """The most output tokens one image of this quality and size is billed."""
    row = IMAGE_OUTPUT_TOKENS.get(quality, IMAGE_OUTPUT_TOKENS["high"])
    if size in row:
        return row[size]
    match = _SIZE.fullmatch(size)
    if match is None:  # `auto`, or a size upstream will refuse
        return max(row.values()) if quality in IMAGE_OUTPUT_TOKENS else _LARGEST_IMAGE_TOKENS
    area = int(match.group(1)) * int(match.group(2))
    return math.ceil(_LARGEST_IMAGE_TOKENS * max(area, _LARGEST_TABLE_AREA) / _LARGEST_TABLE_AREA)


def input_image_tokens(model: str, upload: Upload, fidelity: str) -> int:
    """The most image input tokens one uploaded image is billed (its tiles, plus the
    high-fidelity extra where it applies)."""
    found = media.image_size(upload.data[: 96 * 1024])
    width, height = found if found else (768, 2048)
    tokens = 85 + 170 * media._tiles(width, height)
    if fidelity == "high" or model not in _LOW_FIDELITY_BY_DEFAULT:
        tokens += _FIDELITY_SQUARE if found and width == height else _FIDELITY_OTHER
    return tokens


def _size_image(kind: str, model: str, body: dict[str, Any], form: Form | None) -> MediaRequest:
    n = _int(body, "n", 1, 1, MAX_IMAGES)
    prompt = _text(body, "prompt", required=kind != "image_variation")
    size = _text(body, "size") or ("auto" if is_gpt_image(model) else "1024x1024")
    quality = _text(body, "quality")
    stream = _flag(body.get("stream")) and kind in STREAMABLE
    images = form.files_named("image", "image[]") if form is not None else []
    if kind != "image_generation" and not images:
        raise Refused(
            "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
        )
    if not is_gpt_image(model):
        quality = "hd" if quality == "hd" else "standard"
        return MediaRequest(
            kind,
            model,
            body,
            form,
            False,
            Ceiling(tool_calls={f"image:{quality}:{size}": n}),
            0,
            per_image_fee=f"image:{quality}:{size}",
        )
    text = count_text(prompt, model) + PROMPT_OVERHEAD_TOKENS if prompt else 0
    fidelity = _text(body, "input_fidelity")
    image_in = sum(input_image_tokens(model, image, fidelity) for image in images)
    partial = _int(body, "partial_images", 0, 0, 3) if stream else 0
    per_image = image_output_tokens(quality or "auto", size) + partial * PARTIAL_IMAGE_TOKENS
    ceiling = Ceiling(input=text, image_input=image_in, image_output=n * per_image)
    return MediaRequest(kind, model, body, form, stream, ceiling, text)


def _speech_seconds_at_most(text: str, speed: float) -> float:
    return max(1.0, len(text) / (_SLOWEST_CHARS_PER_SECOND * speed))


def _size_speech(model: str, body: dict[str, Any], price: Price | None) -> MediaRequest:
    text = _text(body, "input", required=True)
    speed = _number(body, "speed", 1.0)
    stream = body.get("stream_format") == "sse"
    if price is not None and price.rate("characters_per_1m") is not None:
        chars = len(text)
        return MediaRequest(
            "speech", model, body, None, False, Ceiling(characters=chars), 0, characters=chars
        )
    instructions = _text(body, "instructions")
    prompt = count_text(text, model) + count_text(instructions, model) + PROMPT_OVERHEAD_TOKENS
    out = math.ceil(SPEECH_TOKENS_PER_SECOND * _speech_seconds_at_most(text, speed))
    ceiling = Ceiling(input=prompt, output=out, audio_output=True)
    return MediaRequest("speech", model, body, None, stream, ceiling, prompt)


def audio_seconds(upload: Upload) -> float | None:
    """An uploaded clip's length: a WAV's from its header, other formats as tinytag reads
    them; None if neither can."""
    seconds = media.wav_seconds(upload.data[:4096], upload.size)
    if seconds is not None:
        return seconds
    from tinytag import TinyTag, TinyTagException

    try:
        tag = TinyTag.get(file_obj=io.BytesIO(upload.data), tags=False, duration=True)
    except (TinyTagException, OSError, ValueError, KeyError, IndexError, EOFError):
        return None
    except Exception:  # noqa: BLE001 (a hostile file must never fail the request)
        return None
    duration = tag.duration
    return duration if isinstance(duration, float) and 0 < duration < 10**6 else None


def _size_transcription(
    kind: str, model: str, body: dict[str, Any], form: Form | None, price: Price | None
) -> MediaRequest:
    files = form.files_named("file") if form is not None else []
    if not files:
        raise Refused(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    upload = files[0]
    seconds = audio_seconds(upload)
    # A clip whose length cannot be read: bounded by its size at the lowest bitrate.
    most = seconds + 1 if seconds is not None else upload.size / 1000
    stream = _flag(body.get("stream")) and kind == "transcription"
    if price is not None and price.rate("audio_per_minute") is not None:
        ceiling = Ceiling(audio_seconds=math.ceil(most))
        return MediaRequest(kind, model, body, form, False, ceiling, 0, audio_seconds=seconds)
    prompt = count_text(_text(body, "prompt"), model)
    audio = math.ceil(most * media.AUDIO_INPUT_TOKENS_PER_SECOND) + 1
    ceiling = Ceiling(input=prompt, audio_input=audio, output=TRANSCRIPT_MAX_TOKENS)
    return MediaRequest(kind, model, body, form, stream, ceiling, prompt, audio_seconds=seconds)


# -- billing ---------------------------------------------------------------------------------


def _count(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value <= MAX_INT else 0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def image_usage(req: MediaRequest, payload: dict[str, Any]) -> TokenUsage | None:
    """What an image answer (or a stream's completed event) is billed."""
    if req.per_image_fee:
        data = payload.get("data")
        made = len(data) if isinstance(data, list) else 0
        return TokenUsage(tool_calls={req.per_image_fee: made} if made else {})
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    inp, out = _dict(usage.get("input_tokens_details")), usage.get("output_tokens_details")
    output = _count(usage.get("output_tokens"))
    image_out = _count(out.get("image_tokens")) if isinstance(out, dict) else output
    return TokenUsage(
        prompt=_count(usage.get("input_tokens")),
        cached=_count(inp.get("cached_tokens")),
        image_input=_count(inp.get("image_tokens")),
        completion=output,
        image_output=min(image_out, output),
    )


def speech_usage_event(payload: dict[str, Any]) -> TokenUsage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    output = _count(usage.get("output_tokens"))
    return TokenUsage(
        prompt=_count(usage.get("input_tokens")), completion=output, audio_output=output
    )


def speech_estimate(req: MediaRequest, audio_bytes: int) -> TokenUsage:
    """A binary speech answer of a token model (it carries no usage): the input as counted,
    the audio by its length (wav / pcm) or the input's (compressed formats), never more than
    was reserved."""
    if req.characters:
        return TokenUsage(characters=req.characters)
    fmt = str(req.body.get("response_format") or "mp3")
    if fmt in ("wav", "pcm"):
        seconds = max(0, audio_bytes - (44 if fmt == "wav" else 0)) / _PCM_BYTES_PER_SECOND
    else:
        speed = _number(req.body, "speed", 1.0)
        seconds = len(str(req.body.get("input") or "")) / (_TYPICAL_CHARS_PER_SECOND * speed)
    out = min(math.ceil(seconds * SPEECH_TOKENS_PER_SECOND), req.ceiling.output)
    return TokenUsage(prompt=req.prompt_estimate, completion=out, audio_output=out)


def transcription_usage(req: MediaRequest, payload: object, text: str) -> tuple[TokenUsage, bool]:
    """(what a transcription or translation is billed, whether it is estimated): from the
    answer's usage (or whisper's `duration`), else from the file's length and the text."""
    body = payload if isinstance(payload, dict) else {}
    usage = _dict(body.get("usage"))
    if req.ceiling.audio_seconds:  # per-minute model
        seconds = usage.get("seconds") if usage.get("type") == "duration" else body.get("duration")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            return TokenUsage(audio_seconds=math.ceil(seconds)), False
        known = req.audio_seconds
        heard = math.ceil(known) if known is not None else req.ceiling.audio_seconds
        return TokenUsage(audio_seconds=heard), True
    if usage.get("type") == "tokens":
        details = _dict(usage.get("input_token_details"))
        return (
            TokenUsage(
                prompt=_count(usage.get("input_tokens")),
                audio_input=_count(details.get("audio_tokens")),
                completion=_count(usage.get("output_tokens")),
            ),
            False,
        )
    known = req.audio_seconds
    audio = (
        math.ceil(known * media.AUDIO_INPUT_TOKENS_PER_SECOND)
        if known is not None
        else req.ceiling.audio_input
    )
    spoken = str(body.get("text") or "") if body else text
    return (
        TokenUsage(
            prompt=req.prompt_estimate + audio,
            audio_input=audio,
            completion=count_text(spoken, req.model),
        ),
        True,
    )
