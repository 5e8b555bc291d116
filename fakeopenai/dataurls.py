"""Base64 payloads inside request bodies: `data:<type>;base64,<data>` URLs (images, files) and
bare base64 (input audio)."""

from __future__ import annotations

import base64
import binascii

from fakeopenai.errors import OpenAIError


def decode_base64(value: object, *, what: str) -> bytes:
    """The bytes of a base64 data URL, or of bare base64; a 400 in OpenAI's shape otherwise."""
    if not isinstance(value, str):
        raise OpenAIError(400, f"Invalid {what}: expected a base64 string.", code="invalid_value")
    header, comma, payload = value.partition(",")
    if not comma:
        header, payload = "", value
    if header and not (header.startswith("data:") and header.endswith(";base64")):
        raise OpenAIError(
            400, f"Invalid {what}: only base64 data URLs are supported.", code="invalid_value"
        )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, f"Invalid {what}: not valid base64.", code="invalid_value") from None
