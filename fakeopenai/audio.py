"""Audio in chat completions: what heard audio costs, and what a spoken reply is made of.

What the fake assumes OpenAI bills for audio:

- Audio in (`input_audio` parts, wav or mp3): 10 tokens a second, rounded up per part. A
  WAV's length is its data chunk's bytes over the byte rate of its fmt chunk; an mp3 is
  taken to be 128 kbit/s. These tokens are prompt tokens, reported again in
  `prompt_tokens_details.audio_tokens`. The `audio_input_tokens` knob replaces the count.
- Audio out (`modalities` with "audio"): the reply is spoken, 20 tokens a second at 2.5 words
  a second of its transcript (8 tokens a word), or the `audio_output_tokens` knob. They are
  completion tokens, reported again in `completion_tokens_details.audio_tokens`, and with
  the transcript's own tokens they never exceed the request's max (`fakeopenai.content`).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from fakeopenai.dataurls import decode_base64
from fakeopenai.errors import OpenAIError

INPUT_TOKENS_PER_SECOND = 10
MP3_BITS_PER_SECOND = 128_000
OUTPUT_TOKENS_PER_SECOND = 20
SPOKEN_WORDS_PER_SECOND = Fraction(5, 2)
# The audio sent back: 20 ms of silence, 24 kHz 16-bit mono (the rate OpenAI speaks at).
_SAMPLE_RATE = 24_000
_SILENCE = bytes(2 * _SAMPLE_RATE // 50)


def _undecodable(fmt: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"The audio provided could not be decoded as {fmt}. Make sure it is a valid {fmt} file.",
        code="invalid_value",
    )


def wav_seconds(data: bytes) -> Fraction:
    """A WAV's length: its data chunk over the byte rate of its fmt chunk."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _undecodable("wav")
    byte_rate = None
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if chunk == b"fmt " and at + 20 <= len(data):
            (byte_rate,) = struct.unpack("<I", data[at + 16 : at + 20])
        elif chunk == b"data":
            if not byte_rate:
                break
            # A streamed WAV leaves the size unknown (0xFFFFFFFF): the rest is its data.
            size = min(size, len(data) - at - 8)
            return Fraction(size, byte_rate)
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    raise _undecodable("wav")


def input_audio_tokens(part: dict[str, object]) -> int:
    """A chat `{"type": "input_audio", "input_audio": {"data": b64, "format": ...}}` part."""
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise OpenAIError(
            400, "Missing required parameter: 'input_audio'.", code="missing_required_parameter"
        )
    fmt = audio.get("format")
    if fmt not in ("wav", "mp3"):
        raise OpenAIError(
            400,
            f"Invalid value: '{fmt}'. Supported values are: 'wav' and 'mp3'.",
            code="invalid_value",
        )
    data = decode_base64(audio.get("data"), what="input audio")
    if fmt == "wav":
        seconds = wav_seconds(data)
    else:
        seconds = Fraction(len(data) * 8, MP3_BITS_PER_SECOND)
    return math.ceil(seconds * INPUT_TOKENS_PER_SECOND)


def speech_tokens(transcript: str) -> int:
    """The audio tokens of saying `transcript` aloud."""
    seconds = len(transcript.split()) / SPOKEN_WORDS_PER_SECOND
    return math.ceil(seconds * OUTPUT_TOKENS_PER_SECOND)


def spoken_audio(fmt: object) -> bytes:
    """A short valid clip: raw samples for pcm16, else a WAV (the fake encodes nothing else,
    so mp3, flac, opus and aac requests get a WAV too)."""
    if fmt == "pcm16":
        return _SILENCE
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, _SAMPLE_RATE, 2 * _SAMPLE_RATE, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(_SILENCE)) + _SILENCE
    return b"RIFF" + struct.pack("<I", len(body)) + body
