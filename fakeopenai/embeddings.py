"""POST /v1/embeddings: deterministic unit vectors, as floats or base64."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import orjson
from aiohttp import web

from fakeopenai.catalog import answer_model
from fakeopenai.counting import count_input
from fakeopenai.errors import OpenAIError
from fakeopenai.protocol import KNOBS, TAB, json_body, json_response, required_model

DEFAULT_EMBEDDING_DIMENSIONS = 8


def embedding_vector(item: object, dimensions: int) -> list[float]:
    """A unit vector that depends only on the input, so equal inputs embed equally."""
    seed = orjson.dumps(item) if not isinstance(item, str) else item.encode()
    raw = hashlib.shake_256(seed).digest(dimensions * 4)
    values = [(v / 0x7FFFFFFF) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Rounded through float32, so the float and base64 forms carry the same numbers.
    return list(
        struct.unpack(
            f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))
        )
    )


async def embeddings(request: web.Request) -> web.Response:
    body = json_body(request)
    model = required_model(body)
    knobs = request[KNOBS]
    value = body.get("input")
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, int) for v in value)
    ):
        items: list[object] = [value]  # one string, or one prompt already in tokens
    elif isinstance(value, list) and value:
        items = list(value)
    else:
        raise OpenAIError(400, "'input' is a required property", param="input")
    dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= 8192
    ):
        raise OpenAIError(400, "dimensions must be a positive integer.", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(item, dimensions)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt = knobs.reported_prompt(count_input(value, model))
    request[TAB].charge(prompt=prompt)
    result: dict[str, Any] = {"object": "list", "data": data, "model": answer_model(knobs, model)}
    if not knobs.no_usage:
        result["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        request[TAB].usage_reported = True
    return json_response(result)
