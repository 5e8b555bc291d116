"""POST /v1/moderations: nothing is ever flagged. OpenAI does not bill moderations, so
neither does the fake (its bill is 0/0)."""

from __future__ import annotations

from aiohttp import web

from fakeopenai.catalog import answer_model
from fakeopenai.errors import OpenAIError
from fakeopenai.protocol import KNOBS, TAB, ident, json_body, json_response

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# OpenAI's omni model only reads images for these categories.
_IMAGE_CATEGORIES = frozenset(
    (
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "violence",
        "violence/graphic",
    )
)


async def moderations(request: web.Request) -> web.Response:
    body = json_body(request)
    knobs = request[KNOBS]
    model = body.get("model") or "omni-moderation-latest"
    if isinstance(model, str):
        request[TAB].model = model
    value = body.get("input")
    if isinstance(value, str):
        count = 1
    elif isinstance(value, list) and value:
        # A list of strings is one result each; a list of multimodal parts is one input.
        count = len(value) if all(isinstance(v, str) for v in value) else 1
    else:
        raise OpenAIError(400, "'input' is a required property", param="input")
    result = {
        "flagged": False,
        "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 1e-06),
        "category_applied_input_types": {
            name: ["text", "image"] if name in _IMAGE_CATEGORIES else ["text"]
            for name in MODERATION_CATEGORIES
        },
    }
    return json_response(
        {
            "id": ident("modr-", 32),
            "model": answer_model(knobs, model),
            "results": [result] * count,
        }
    )
