"""What an image in a prompt costs: its size, read from the header of a data: URL, then the
rule of the model's family.

What the fake assumes OpenAI bills for an image (the vision guide's "Calculating costs"):

- Tile models (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, chatgpt-4o, and anything not listed
  below): `detail: "low"` costs the family's base tokens. Otherwise ("high", "auto" or no
  detail) the image is scaled down to fit in 2048×2048, then down so its shorter side is
  768 px (never up), and costs base + tile × the number of 512-px squares covering it.
  Base / tile: 85 / 170 by default; gpt-4o-mini 2833 / 5667 (its low per-token price makes an
  image cost what it costs on gpt-4o), gpt-5 70 / 140, o1 and o3 75 / 150.
- Patch models (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): 32-px patches,
  ceil(w/32) × ceil(h/32); over 1536 patches the image is scaled down to fit 1536; the
  patches times the model's multiplier (1.62, 2.46, 1.72, 1.62, 2.46), rounded. `detail`
  changes nothing for them (measured: a small image costs the same at low and high).
- An image behind a URL that is not data: is not fetched: it is taken to be 2048×2048, or
  the size of the `image_size` knob.
- A data: URL that is not a PNG, JPEG, GIF or WebP is refused with 400, as OpenAI refuses it
  (and a refused request costs nothing).
"""

from __future__ import annotations

import math
import struct

from fakeopenai.dataurls import decode_base64
from fakeopenai.errors import OpenAIError

UNFETCHED_SIZE = (2048, 2048)
# (model prefix, base tokens, tokens per 512-px tile); the first prefix that matches wins.
_TILE_RATES = (
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5", 70, 140),
    ("o1", 75, 150),
    ("o3", 75, 150),
)
_DEFAULT_TILE_RATE = (85, 170)
_PATCH_MULTIPLIERS = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
)
_MAX_PATCHES = 1536
# JPEG start-of-frame markers carry the size; C4 (Huffman), C8 and CC (arithmetic) do not.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_UNSUPPORTED = (
    "You uploaded an unsupported image. Please make sure your image has of one the following "
    "formats: ['png', 'jpeg', 'gif', 'webp']."
)


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_dimensions(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers with no length
            at += 2
            continue
        if marker in _JPEG_FRAMES:
            if at + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        at += 2 + length
    return None


def _tile_rate(model: str) -> tuple[int, int]:
    for prefix, base, tile in _TILE_RATES:
        if model.startswith(prefix):
            return base, tile
    return _DEFAULT_TILE_RATE


def _patch_multiplier(model: str) -> float | None:
    for prefix, multiplier in _PATCH_MULTIPLIERS:
        if model.startswith(prefix):
            return multiplier
    return None


def tile_tokens(width: int, height: int, *, base: int = 85, tile: int = 170) -> int:
    # Whole pixels after each scaling, rounded down, as an image resize makes them.
    longest = max(width, height)
    if longest > 2048:
        width, height = width * 2048 // longest, height * 2048 // longest
    shortest = min(width, height)
    if shortest > 768:
        width, height = width * 768 // shortest, height * 768 // shortest
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return base + tile * tiles


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > _MAX_PATCHES:
        # The guide's resize: shrink to about 1536 patches, then so that one side is a whole
        # number of patches.
        ratio = math.sqrt(32 * 32 * _MAX_PATCHES / (width * height))
        across, down = width * ratio / 32, height * ratio / 32
        ratio *= min(math.floor(across) / across, math.floor(down) / down)
        # Rounded before the ceiling: the side that was made whole must stay whole.
        across, down = round(width * ratio / 32, 6), round(height * ratio / 32, 6)
        patches = min(_MAX_PATCHES, math.ceil(across) * math.ceil(down))
    return math.floor(patches * multiplier + 0.5)


def image_tokens(model: str, width: int, height: int, detail: object) -> int:
    name = model.removeprefix("ft:")
    multiplier = _patch_multiplier(name)
    if multiplier is not None:
        return patch_tokens(width, height, multiplier)
    base, tile = _tile_rate(name)
    if detail == "low":
        return base
    return tile_tokens(width, height, base=base, tile=tile)


def url_image_tokens(
    model: str, url: object, detail: object, unfetched_size: tuple[int, int] | None
) -> int:
    """An image given by URL: a data: URL is measured, any other is not fetched."""
    if not isinstance(url, str) or not url:
        raise OpenAIError(400, "Invalid image: an image part needs an image_url.")
    if url.startswith("data:"):
        size = image_dimensions(decode_base64(url, what="image data"))
        if size is None or 0 in size:
            raise OpenAIError(400, _UNSUPPORTED, code="invalid_image_format")
    else:
        size = unfetched_size or UNFETCHED_SIZE
    return image_tokens(model, size[0], size[1], detail)
