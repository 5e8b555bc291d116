"""Upper bounds for the media a request carries: image tokens by OpenAI's rules, audio tokens
from a clip's length, file tokens from a file's size.

Every function answers the MOST OpenAI can bill, never an estimate: a reservation sized
from them can only be too large. Sizes come from the bytes the client sent (image and WAV
headers); what the proxy cannot see (an image behind a URL) is bounded by the largest image
OpenAI accepts after its own down-scaling.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

# OpenAI's image rules (platform.openai.com/docs/guides/images-vision, "Calculating costs").
# Tile rule: fit within 2048×2048, then shortest side to 768, count 512-px tiles.
_TILE_RATES = (  # (model prefix, base tokens, tokens per tile): most specific prefix first
    ("gpt-4o-mini", 2833, 5667),
    ("chatgpt-4o", 85, 170),
    ("gpt-4o", 85, 170),
    ("gpt-4.1", 85, 170),
    ("gpt-4.5", 85, 170),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
)
# Patch rule: 32-px patches, at most 1536 (the image is scaled down to fit), × a multiplier.
_PATCH_MULTIPLIERS = (("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72))
_MAX_PATCHES = 1536
_LARGEST_MULTIPLIER = max(m for _, m in _PATCH_MULTIPLIERS)
# An image whose size is unknown: the most tiles any image can have after scaling (768×2048).
_MAX_TILES = 8
# Audio: OpenAI counts 10 tokens per second of input audio (1 per 100 ms). A clip whose
# length is not in its header is bounded by the lowest bitrate an audio codec OpenAI takes
# uses (8 kbit/s = 1,000 bytes per second).
AUDIO_INPUT_TOKENS_PER_SECOND = 10
_MIN_AUDIO_BYTES_PER_SECOND = 1000


# Enough of an image to find its size (a JPEG's frame header may follow 64 kB of EXIF).
_IMAGE_HEAD_BYTES = 96 * 1024


def _payload(value: object) -> str | None:
    """The base64 text of a `data:…;base64,` URL or of bare base64, else None."""
    if not isinstance(value, str):
        return None
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    return value


def b64_bytes(payload: object, limit: int | None = None) -> bytes | None:
    """Decoded base64 (its first `limit` bytes only, when given: a header needs no more)."""
    text = _payload(payload)
    if text is None:
        return None
    if limit is not None:
        text = text[: (limit // 3 + 1) * 4]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        return None


def data_size(payload: object) -> int | None:
    """How many bytes a base64 payload (or data URL) decodes to, without decoding it."""
    text = _payload(payload)
    if text is None or (isinstance(payload, str) and "://" in payload[:16]):
        return None
    text = text.rstrip("=\n\r ")
    return len(text) * 3 // 4


def is_pdf(payload: object) -> bool:
    head = b64_bytes(payload, limit=8) or b""
    return head.startswith(b"%PDF") or (
        isinstance(payload, str) and payload.startswith("data:application/pdf")
    )


def data_url_image_size(url: object) -> tuple[int, int] | None:
    """An inline image's (width, height) from its header; None for a URL or a non-image."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    head = b64_bytes(url, limit=_IMAGE_HEAD_BYTES)
    return image_size(head) if head else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header; None if it is not one."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return None


def _tiles(width: int, height: int) -> int:
    if width <= 0 or height <= 0:
        return _MAX_TILES
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int, height: int) -> int:
    if width <= 0 or height <= 0:
        return _MAX_PATCHES
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _MAX_PATCHES:
        return patches
    # Scaled down to fit, then whole patches again: never more than the cap.
    scale = math.sqrt(_MAX_PATCHES * 32 * 32 / (width * height))
    return min(_MAX_PATCHES, math.ceil(width * scale / 32) * math.ceil(height * scale / 32))


def _first(table: tuple, model: str):  # noqa: ANN202 (a row of either table)
    return next((row for row in table if model.startswith(row[0])), None)


def image_tokens(model: str, size: tuple[int, int] | None, detail: object) -> int:
    """The most tokens OpenAI bills for one image on `model` (its size if known, the largest
    possible if not). A model the rules do not name is bounded by both rules' maximum."""
    name = model.removeprefix("ft:")
    width, height = size or (0, 0)
    patch = _first(_PATCH_MULTIPLIERS, name)
    if patch is not None:
        return math.ceil(_patches(width, height) * patch[1])
    tile = _first(_TILE_RATES, name)
    if tile is not None:
        _, base, per_tile = tile
        return base if detail == "low" else base + per_tile * _tiles(width, height)
    return max(
        85 + 170 * _tiles(width, height),
        math.ceil(_patches(width, height) * _LARGEST_MULTIPLIER),
    )


def wav_seconds(head: bytes, size: int) -> float | None:
    """A WAV clip's length as a decoder plays it: its samples (the bytes after the header,
    as many as were sent) ÷ (sample rate × channels × bytes per sample). The header's own
    byte rate is not trusted. None if `head` is not a WAV header a decoder would take."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    i, rate = 12, 0
    while i + 8 <= len(head):
        chunk, length = head[i : i + 4], int.from_bytes(head[i + 4 : i + 8], "little")
        if chunk == b"fmt " and i + 24 <= len(head):
            channels = int.from_bytes(head[i + 10 : i + 12], "little")
            sample_rate = int.from_bytes(head[i + 12 : i + 16], "little")
            bits = int.from_bytes(head[i + 22 : i + 24], "little")
            if not (
                1 <= channels <= 8 and 8_000 <= sample_rate <= 384_000 and bits in (8, 16, 24, 32)
            ):
                return None
            rate = sample_rate * channels * bits // 8
        elif chunk == b"data":
            return (size - (i + 8)) / rate if rate else None
        i += 8 + length + (length & 1)
    return None


def audio_input_tokens(payload: object) -> int:
    """The most audio tokens a base64 clip is billed: its WAV length, else its size at the
    lowest bitrate (so any compressed clip is bounded, if generously)."""
    size = data_size(payload) or 0
    seconds = wav_seconds(b64_bytes(payload, limit=4096) or b"", size)
    if seconds is None:
        seconds = size / _MIN_AUDIO_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_INPUT_TOKENS_PER_SECOND) + 1
