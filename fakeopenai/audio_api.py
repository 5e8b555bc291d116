"""POST /v1/audio/speech, /v1/audio/transcriptions and /v1/audio/translations, in OpenAI's
shapes.

What the fake assumes OpenAI bills for audio:

- Speech from tts-1 and tts-1-hd: the characters of `input` (`characters` on the bill); no
  usage is reported.
- Speech from gpt-4o-mini-tts (and its snapshots): tokens. Input: the o200k tokens of `input`
  and `instructions` (prompt tokens, again as `text_input_tokens`); output: 20 audio tokens a
  second of speech, rounded up (completion tokens, again as `audio_output_tokens`). Only the
  SSE form reports them (in `speech.audio.done`).
- Speech lasts 2.5 words a second, over `speed` (as written: 1.1 is 11/10), at least 1 s. The
  audio is silence of that length: wav a RIFF header and 24 kHz 16-bit mono samples, pcm the
  samples alone, mp3 128 kbit/s MPEG-1 Layer III frames of silence (44.1 kHz mono); opus, aac
  and flac only their format's magic then zeros at 64, 128 and 384 kbit/s. It goes out in
  pieces (`fake.chunks`, else at least 4, at most 64 KiB each); a stream cut or ended early
  bills the share of its audio tokens that went out.
- Transcriptions and translations by whisper-1: the audio's seconds, rounded up
  (`audio_seconds`), the `duration` usage of a json or verbose_json transcription (a
  translation reports none). whisper-1 ignores `stream` (as OpenAI documents) and answers
  plainly.
- Transcriptions by the GPT-4o models (gpt-4o-transcribe, gpt-4o-mini-transcribe,
  gpt-4o-transcribe-diarize, their snapshots, gpt-transcribe): tokens. Input: 10 audio tokens a
  second, rounded up (`audio_input_tokens`), and the o200k tokens of `prompt`
  (`text_input_tokens`); output: the o200k tokens of the transcript. A stream cut or ended
  early bills the deltas that went out.
- text, srt and vtt answers carry no usage and are billed the same.
- The audio's length: a WAV's from its header (`fakeopenai.audio`), any other file at
  128 kbit/s of its bytes. A file needs a supported extension and at most 25 MB (else 413),
  must be a WAV or start as an mp3, mp4 / m4a, ogg, flac, webm or MPEG stream does (else
  400 "Invalid file format"), and must last 0.1 s or more.
- The transcript: ⌊2.5 × seconds⌋ words of a fixed English sentence, at least one, in
  segments of up to 10 words; a translation says the same words.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

from fakeopenai.audio import (
    INPUT_TOKENS_PER_SECOND,
    MP3_BITS_PER_SECOND,
    OUTPUT_TOKENS_PER_SECOND,
    SPOKEN_WORDS_PER_SECOND,
    wav_seconds,
)
from fakeopenai.counting import count_o200k, encoder
from fakeopenai.errors import OpenAIError
from fakeopenai.image_api import (
    Form,
    Upload,
    choice,
    form_numbers,
    invalid_type,
    invalid_value,
    missing,
    read_form,
    required_text,
    unknown_parameter,
)
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import (
    KNOBS,
    TAB,
    json_body,
    json_response,
    sleep_ms,
    sse_data,
    wait_before_headers,
)
from fakeopenai.state import STATE
from fakeopenai.streaming import write_stream

# -- speech ---------------------------------------------------------------------------------

TTS_MODELS = ("tts-1", "tts-1-hd")
MINI_TTS = "gpt-4o-mini-tts"
MAX_SPEECH_CHARACTERS = 4096
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
TTS_1_VOICES = ("alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer")
SPEECH_FORMATS = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPEECH_SAMPLE_RATE = 24_000
MIN_SPEECH_SECONDS = 1
DEFAULT_SPEECH_PIECES = 4
MAX_SPEECH_PIECE = 64 * 1024
# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono: 1152 samples in 417 bytes, of which the side
# information and main data are zeros (silence).
_MP3_HEADER = b"\xff\xfb\x90\xc0"
_MP3_FRAME = _MP3_HEADER + bytes(417 - len(_MP3_HEADER))
_MP3_FRAME_RATE = Fraction(44_100, 1152)
# The formats the fake only imitates: their magic, then zeros at this many bytes a second.
_NOMINAL = {
    "opus": (b"OggS", 64_000 // 8),
    "aac": (b"\xff\xf1\x50\x80", 128_000 // 8),
    "flac": (b"fLaC", 384_000 // 8),
}


def _is_mini_tts(model: str) -> bool:
    return model == MINI_TTS or model.startswith(MINI_TTS + "-")


def _speech_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise missing("model")
    if not isinstance(model, str):
        raise invalid_type("model", model, "a string")
    if model not in TTS_MODELS and not _is_mini_tts(model):
        raise invalid_value("model", model, (*TTS_MODELS, MINI_TTS))
    return model


def _voice(body: dict[str, Any], model: str) -> None:
    voice = body.get("voice")
    if voice is None:
        raise missing("voice")
    if isinstance(voice, dict):  # a custom voice: {"id": "voice_..."}
        if not isinstance(voice.get("id"), str) or not voice["id"]:
            raise missing("voice.id")
        return
    voices = VOICES if _is_mini_tts(model) else TTS_1_VOICES
    if voice not in voices:
        raise invalid_value("voice", voice, voices)


def _speed(body: dict[str, Any]) -> Fraction:
    speed = body.get("speed")
    if speed is None:
        return Fraction(1)
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise invalid_type("speed", speed, "a decimal")
    if speed < 0.25:
        raise _speed_out_of_range(speed, "below minimum", ">= 0.25")
    if speed > 4:
        raise _speed_out_of_range(speed, "above maximum", "<= 4")
    return Fraction(str(speed))


def _speed_out_of_range(speed: float, where: str, bound: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid 'speed': decimal {where} value. Expected a value {bound}, but got {speed} "
        "instead.",
        param="speed",
        code=f"decimal_{where.replace(' ', '_')}_value",
    )


def not_with(param: str, model: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"'{param}' is not supported with model '{model}'.",
        param=param,
        code="unsupported_parameter",
    )


def speech_seconds(text: str, speed: Fraction) -> Fraction:
    """How long saying `text` takes: 2.5 words a second over the speed, at least 1 s."""
    return max(Fraction(MIN_SPEECH_SECONDS), len(text.split()) / SPOKEN_WORDS_PER_SECOND / speed)


@dataclass(frozen=True)
class SpeechAudio:
    """Silence in one format: a head, then `units` copies of `unit`, cut in pieces on unit
    boundaries and made only as they are written."""

    head: bytes
    unit: bytes
    units: int

    @property
    def size(self) -> int:
        return len(self.head) + len(self.unit) * self.units

    def piece_count(self, knobs: Knobs) -> int:
        if knobs.chunks is not None and knobs.chunks > 0:
            return max(1, min(knobs.chunks, self.units + 1))
        return max(DEFAULT_SPEECH_PIECES, math.ceil(self.size / MAX_SPEECH_PIECE))

    def piece(self, index: int, count: int) -> bytes:
        start, end = self.units * index // count, self.units * (index + 1) // count
        return (self.head if index == 0 else b"") + self.unit * (end - start)


def speech_audio(fmt: str, seconds: Fraction) -> SpeechAudio:
    if fmt in ("wav", "pcm"):
        samples = math.ceil(seconds * SPEECH_SAMPLE_RATE)
        head = b""
        if fmt == "wav":
            fmt_chunk = struct.pack(
                "<HHIIHH", 1, 1, SPEECH_SAMPLE_RATE, 2 * SPEECH_SAMPLE_RATE, 2, 16
            )
            head = (
                b"RIFF"
                + struct.pack("<I", 36 + 2 * samples)
                + b"WAVEfmt "
                + struct.pack("<I", len(fmt_chunk))
                + fmt_chunk
                + b"data"
                + struct.pack("<I", 2 * samples)
            )
        return SpeechAudio(head, b"\x00\x00", samples)
    if fmt == "mp3":
        return SpeechAudio(b"", _MP3_FRAME, math.ceil(seconds * _MP3_FRAME_RATE))
    magic, byte_rate = _NOMINAL[fmt]
    return SpeechAudio(magic, b"\x00", math.ceil(seconds * byte_rate))


async def _stall(knobs: Knobs) -> None:
    if knobs.stall_ms is None:
        # Until the client leaves: served by `start_server`, aiohttp cancels the handler then.
        await asyncio.get_running_loop().create_future()
    else:
        await sleep_ms(knobs.stall_ms)


async def _write_audio(
    request: web.Request, knobs: Knobs, audio: SpeechAudio, content_type: str
) -> web.StreamResponse:
    """The audio as a chunked body, a piece a write; `cut_after`, `end_early_after`,
    `stall_after` and `chunk_delay_ms` count and pace the pieces as stream frames."""
    state, tab = request.app[STATE], request[TAB]
    count = audio.piece_count(knobs)
    stop_at, ending = count, "completed"
    if knobs.cut_after is not None and knobs.cut_after < count:
        stop_at, ending = max(0, knobs.cut_after), "cut"
    elif knobs.end_early_after is not None and knobs.end_early_after < count:
        stop_at, ending = max(0, knobs.end_early_after), "ended_early"
    await wait_before_headers(request)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    tab.status = response.status
    state.open_streams += 1
    try:
        for index in range(stop_at):
            if index == knobs.stall_after:
                await _stall(knobs)
            elif index and knobs.chunk_delay_ms > 0:
                await sleep_ms(knobs.chunk_delay_ms)
            await response.write(audio.piece(index, count))
            tab.content_frames += 1
        if knobs.stall_after is not None and knobs.stall_after >= stop_at:
            await _stall(knobs)
        if ending == "cut":
            tab.outcome = "cut"
            if request.transport is not None:
                request.transport.close()
            return response
        tab.outcome = ending
        await response.write_eof()
        return response
    finally:
        state.open_streams -= 1


def _share(total: int, count: int) -> Callable[[int], int]:
    """What the first n of `count` equal pieces of `total` come to."""
    return lambda frames: total * min(frames, count) // count


async def speech(request: web.Request) -> web.StreamResponse:
    body = json_body(request)
    model = _speech_model(body)
    text = required_text(body, "input", MAX_SPEECH_CHARACTERS)
    _voice(body, model)
    instructions = body.get("instructions")
    if instructions is not None:
        if model in TTS_MODELS:
            raise not_with("instructions", model)
        if not isinstance(instructions, str):
            raise invalid_type("instructions", instructions, "a string")
    fmt = choice(body, "response_format", tuple(SPEECH_FORMATS), "mp3")
    speed = _speed(body)
    stream_format = choice(body, "stream_format", ("audio", "sse"), "audio")
    if stream_format == "sse" and model in TTS_MODELS:
        raise not_with("stream_format", model)
    knobs, tab = request[KNOBS], request[TAB]
    seconds = speech_seconds(text, speed)
    audio = speech_audio(fmt, seconds)
    count = audio.piece_count(knobs)
    usage = None
    if model in TTS_MODELS:
        tab.characters = len(text)
    else:
        prompt = knobs.reported_prompt(count_o200k(text) + count_o200k(instructions or ""))
        output = knobs.reported_output(math.ceil(seconds * OUTPUT_TOKENS_PER_SECOND))
        tab.charge(
            prompt=prompt,
            output=output,
            progress=_share(output, count),
            audio_output=output,
            audio_progress=_share(output, count),
        )
        tab.text_input_tokens = prompt
        usage = {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}
    if stream_format == "audio":
        return await _write_audio(request, knobs, audio, SPEECH_FORMATS[fmt])
    deltas = [
        sse_data(
            {
                "type": "speech.audio.delta",
                "audio": base64.b64encode(audio.piece(index, count)).decode(),
            }
        )
        for index in range(count)
    ]
    done: dict[str, Any] = {"type": "speech.audio.done"}
    if not knobs.no_usage:
        done["usage"] = usage
    return await write_stream(
        request,
        knobs,
        head=[],
        content=deltas,
        tail=[sse_data(done)],
        usage_at=None if knobs.no_usage else 0,
    )


# -- transcriptions and translations ----------------------------------------------------------

WHISPER = "whisper-1"
MAX_AUDIO_BYTES = 25 * 1024 * 1024
MIN_AUDIO_SECONDS = Fraction(1, 10)
TRANSCRIPT_WORDS_PER_SECOND = Fraction(5, 2)
SEGMENT_WORDS = 10
AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
WHISPER_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GPT_FORMATS = ("json", "text")
DIARIZE_FORMATS = ("json", "text", "diarized_json")
_TRANSCRIBE_PREFIXES = ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe")
_SENTENCE = "This is the fake transcript of the audio that you sent.".split()
_LANGUAGES = {
    "en": "english",
    "de": "german",
    "es": "spanish",
    "fr": "french",
    "it": "italian",
    "ja": "japanese",
    "nl": "dutch",
    "pt": "portuguese",
    "zh": "chinese",
}


def _invalid_file() -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid file format. Supported formats: {list(AUDIO_EXTENSIONS)}",
        param="file",
        code="invalid_value",
    )


def _looks_like_audio(data: bytes) -> bool:
    """The start of an mp3 (an ID3 tag or a frame sync), mp4 / m4a, ogg, flac, webm or MPEG
    stream."""
    return (
        data[:3] == b"ID3"
        or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
        or data[4:8] == b"ftyp"
        or data[:4] in (b"OggS", b"fLaC", b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba")
    )


def audio_file_seconds(upload: Upload) -> Fraction:
    """The length of an uploaded audio file, checked as OpenAI checks it."""
    if len(upload.data) > MAX_AUDIO_BYTES:
        raise OpenAIError(
            413,
            f"Maximum content size limit ({MAX_AUDIO_BYTES}) exceeded ({len(upload.data)} "
            "bytes read)",
            param="file",
            code="file_too_large",
        )
    extension = PurePosixPath(upload.filename or "").suffix.lower().lstrip(".")
    if extension not in AUDIO_EXTENSIONS:
        raise _invalid_file()
    data = upload.data
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            seconds = wav_seconds(data)
        except OpenAIError:
            raise OpenAIError(
                400,
                "Audio file might be corrupted or unsupported",
                param="file",
                code="invalid_value",
            ) from None
    elif _looks_like_audio(data):
        seconds = Fraction(len(data) * 8, MP3_BITS_PER_SECOND)
    else:
        raise _invalid_file()
    if seconds < MIN_AUDIO_SECONDS:
        raise OpenAIError(
            400,
            "Audio file is too short. Minimum audio length is 0.1 seconds.",
            param="file",
            code="audio_too_short",
        )
    return seconds


def transcript_words(seconds: Fraction) -> list[str]:
    count = max(1, math.floor(seconds * TRANSCRIPT_WORDS_PER_SECOND))
    return [_SENTENCE[i % len(_SENTENCE)] for i in range(count)]


@dataclass(frozen=True)
class Heard:
    """A checked transcription or translation request and what the fake hears in it."""

    model: str
    seconds: Fraction
    words: list[str]
    response_format: str
    prompt: str
    temperature: float
    params: dict[str, Any]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def whisper(self) -> bool:
        return self.model == WHISPER

    def segments(self) -> list[tuple[float, float, str]]:
        """(start, end, text) of each run of up to 10 words, each word 0.4 s long."""
        end_of_audio = float(self.seconds)
        spans = []
        for first in range(0, len(self.words), SEGMENT_WORDS):
            words = self.words[first : first + SEGMENT_WORDS]
            start = float(first / TRANSCRIPT_WORDS_PER_SECOND)
            end = float((first + len(words)) / TRANSCRIPT_WORDS_PER_SECOND)
            spans.append((min(start, end_of_audio), min(end, end_of_audio), " ".join(words)))
        return spans


def _temperature(params: dict[str, Any]) -> float:
    value = params.get("temperature")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_type("temperature", value, "a decimal")
    if not 0 <= value <= 1:
        raise OpenAIError(
            400,
            f"Invalid 'temperature': decimal out of range. Expected a value between 0 and 1, "
            f"but got {value} instead.",
            param="temperature",
            code="invalid_value",
        )
    return float(value)


def _transcribe_model(params: dict[str, Any], *, translation: bool) -> str:
    model = params.get("model")
    if model is None:
        raise missing("model")
    if translation:
        if model != WHISPER:
            raise invalid_value("model", model, (WHISPER,))
        return model
    if model != WHISPER and not str(model).startswith(_TRANSCRIBE_PREFIXES):
        raise invalid_value(
            "model",
            model,
            (WHISPER, "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"),
        )
    return model


def _is_diarize(model: str) -> bool:
    return model.startswith("gpt-4o-transcribe-diarize")


def _formats(model: str, *, translation: bool) -> tuple[str, ...]:
    if translation or model == WHISPER:
        return WHISPER_FORMATS
    return DIARIZE_FORMATS if _is_diarize(model) else GPT_FORMATS


async def _heard(request: web.Request, *, translation: bool) -> Heard:
    form: Form = await read_form(request)
    params = form.params()
    params.pop("fake", None)
    form_numbers(params, (), ("temperature",))
    for name in ("timestamp_granularities", "include"):
        if isinstance(params.get(name), str):  # sent once without the brackets
            params[name] = [params[name]]
    tab = request[TAB]
    tab.model = params.get("model") if isinstance(params.get("model"), str) else None
    files = form.uploads("file")
    if not files:
        raise missing("file")
    model = _transcribe_model(params, translation=translation)
    # whisper-1 ignores `stream` (OpenAI's reference says so): its answer is plain.
    tab.stream = params.get("stream") is True and model != WHISPER
    formats = _formats(model, translation=translation)
    response_format = params.get("response_format") or "json"
    if response_format not in formats:
        raise OpenAIError(
            400,
            f"response_format '{response_format}' is not compatible with model '{model}'. "
            f"Use {_or(formats)}.",
            param="response_format",
            code="unsupported_value",
        )
    prompt = params.get("prompt") or ""
    if not isinstance(prompt, str):
        raise invalid_type("prompt", prompt, "a string")
    diarize = _is_diarize(model)
    if diarize:
        for name in ("prompt", "timestamp_granularities", "include"):
            if params.get(name):
                raise not_with(name, model)
    granularities = params.get("timestamp_granularities") or []
    for granularity in granularities:
        if granularity not in ("word", "segment"):
            raise invalid_value("timestamp_granularities", granularity, ("word", "segment"))
    for item in params.get("include") or []:
        if item != "logprobs":
            raise invalid_value("include", item, ("logprobs",))
        if model == WHISPER:
            raise not_with("include", model)
    seconds = audio_file_seconds(files[0])
    if diarize and seconds > 30 and not params.get("chunking_strategy"):
        raise OpenAIError(
            400,
            "chunking_strategy is required for diarization of audio longer than 30 seconds.",
            param="chunking_strategy",
            code="missing_required_parameter",
        )
    return Heard(
        model=model,
        seconds=seconds,
        words=transcript_words(seconds),
        response_format=response_format,
        prompt=prompt,
        temperature=_temperature(params),
        params=params,
    )


def _or(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _subtitles(heard: Heard, fmt: str) -> str:
    blocks = []
    for index, (start, end, text) in enumerate(heard.segments(), start=1):
        separator = "," if fmt == "srt" else "."
        span = f"{_timestamp(start, separator)} --> {_timestamp(end, separator)}"
        blocks.append(f"{index}\n{span}\n{text}\n" if fmt == "srt" else f"{span}\n{text}\n")
    body = "\n".join(blocks)
    return body if fmt == "srt" else "WEBVTT\n\n" + body


def _segments(heard: Heard) -> list[dict[str, Any]]:
    tokenizer = encoder("o200k_base")
    return [
        {
            "id": index,
            "seek": 0,
            "start": start,
            "end": end,
            "text": " " + text,
            "tokens": tokenizer.encode(" " + text),
            "temperature": heard.temperature,
            "avg_logprob": -0.25,
            "compression_ratio": 1.2,
            "no_speech_prob": 0.01,
        }
        for index, (start, end, text) in enumerate(heard.segments())
    ]


def _verbose(heard: Heard, task: str) -> dict[str, Any]:
    language = "english"
    if task == "transcribe" and isinstance(heard.params.get("language"), str):
        language = _LANGUAGES.get(heard.params["language"], heard.params["language"])
    result: dict[str, Any] = {
        "task": task,
        "language": language,
        "duration": float(heard.seconds),
        "text": heard.text,
    }
    granularities = heard.params.get("timestamp_granularities") or ["segment"]
    if task == "translate" or "segment" in granularities:
        result["segments"] = _segments(heard)
    if task == "transcribe" and "word" in granularities:
        result["words"] = [
            {
                "word": word,
                "start": float(min(i / TRANSCRIPT_WORDS_PER_SECOND, heard.seconds)),
                "end": float(min((i + 1) / TRANSCRIPT_WORDS_PER_SECOND, heard.seconds)),
            }
            for i, word in enumerate(heard.words)
        ]
    return result


def _diarized(heard: Heard) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "duration": float(heard.seconds),
        "text": heard.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{index}",
                "start": start,
                "end": end,
                "speaker": "AB"[index % 2],
                "text": text,
            }
            for index, (start, end, text) in enumerate(heard.segments())
        ],
    }


def _logprobs(text: str) -> list[dict[str, Any]]:
    tokenizer = encoder("o200k_base")
    return [
        {"token": piece.decode(errors="replace"), "bytes": list(piece), "logprob": -0.01}
        for piece in (tokenizer.decode_single_token_bytes(t) for t in tokenizer.encode(text))
    ]


def _text_answer(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _token_usage(heard: Heard, knobs: Knobs) -> tuple[dict[str, Any], int, int]:
    """The GPT-4o models' usage: the audio and prompt in, the transcript out."""
    audio = math.ceil(heard.seconds * INPUT_TOKENS_PER_SECOND)
    text = count_o200k(heard.prompt)
    prompt = knobs.reported_prompt(audio + text)
    output = knobs.reported_output(count_o200k(heard.text))
    usage = {
        "type": "tokens",
        "input_tokens": prompt,
        "input_token_details": {"text_tokens": text, "audio_tokens": audio},
        "output_tokens": output,
        "total_tokens": prompt + output,
    }
    return usage, audio, text


async def _transcribe_stream(
    request: web.Request, heard: Heard, knobs: Knobs, usage: dict[str, Any]
) -> web.StreamResponse:
    """A delta a word (with its segment's id when diarizing, and each segment's event after
    its words for diarized_json), then `transcript.text.done` with the usage."""
    diarize = _is_diarize(heard.model)
    frames: list[bytes] = []
    tokens: list[int] = []
    segments = _diarized(heard)["segments"] if diarize else []
    for index, word in enumerate(heard.words):
        delta: dict[str, Any] = {
            "type": "transcript.text.delta",
            "delta": word if index == 0 else " " + word,
        }
        if diarize:
            delta["segment_id"] = f"seg_{index // SEGMENT_WORDS}"
        frames.append(sse_data(delta))
        tokens.append(count_o200k(delta["delta"]))
        last_of_segment = (index + 1) % SEGMENT_WORDS == 0 or index + 1 == len(heard.words)
        if heard.response_format == "diarized_json" and last_of_segment:
            frames.append(sse_data(segments[index // SEGMENT_WORDS]))
            tokens.append(0)
    cumulative = [0]
    for count in tokens:
        cumulative.append(cumulative[-1] + count)
    output = usage["output_tokens"]
    tab = request[TAB]
    tab.progress = lambda n: output if n >= len(frames) else min(output, cumulative[n])
    done: dict[str, Any] = {"type": "transcript.text.done", "text": heard.text}
    if not knobs.no_usage:
        done["usage"] = usage
    return await write_stream(
        request,
        knobs,
        head=[],
        content=frames,
        tail=[sse_data(done)],
        usage_at=None if knobs.no_usage else 0,
    )


async def _answer(request: web.Request, heard: Heard, *, task: str) -> web.StreamResponse:
    knobs, tab = request[KNOBS], request[TAB]
    tab.model = heard.model
    fmt = heard.response_format
    if heard.whisper:
        seconds = math.ceil(heard.seconds)
        tab.audio_seconds = seconds
        usage: dict[str, Any] = {"type": "duration", "seconds": seconds}
    else:
        usage, audio, text = _token_usage(heard, knobs)
        tab.charge(prompt=usage["input_tokens"], output=usage["output_tokens"], audio_input=audio)
        tab.text_input_tokens = text
        if tab.stream:
            return await _transcribe_stream(request, heard, knobs, usage)
    if fmt == "text":
        return _text_answer(heard.text + "\n")
    if fmt in ("srt", "vtt"):
        return _text_answer(_subtitles(heard, fmt))
    if fmt == "verbose_json":
        result = _verbose(heard, task)
    elif fmt == "diarized_json":
        result = _diarized(heard)
    else:
        result = {"text": heard.text}
        if "logprobs" in (heard.params.get("include") or []):
            result["logprobs"] = _logprobs(heard.text)
    # A translation reports no usage.
    if task == "transcribe" and not knobs.no_usage:
        result["usage"] = usage
        tab.usage_reported = True
    return json_response(result)


async def transcriptions(request: web.Request) -> web.StreamResponse:
    heard = await _heard(request, translation=False)
    return await _answer(request, heard, task="transcribe")


async def translations(request: web.Request) -> web.StreamResponse:
    heard = await _heard(request, translation=True)
    for name in ("timestamp_granularities", "include"):
        if heard.params.get(name) is not None:
            raise unknown_parameter(name)
    return await _answer(request, heard, task="translate")
