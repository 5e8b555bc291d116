"""The models the fake knows: GET /v1/models and /v1/models/{id}, and the snapshot name an
alias is answered with."""

from __future__ import annotations

from aiohttp import web

from fakeopenai.errors import OpenAIError
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import TAB, json_response

# OpenAI answers an alias with the snapshot that served it; the proxy prices by that name.
SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
}
# (id, created, owned_by) as GET /v1/models lists them.
MODELS = (
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o-mini-2024-07-18", 1721172717, "system"),
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-2024-08-06", 1722814719, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("gpt-5", 1754425777, "system"),
    ("gpt-5-mini", 1754425928, "system"),
    ("o3-mini", 1737146383, "system"),
    ("o4-mini", 1744225351, "system"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("text-embedding-ada-002", 1671217299, "openai-internal"),
    ("omni-moderation-latest", 1731689265, "system"),
    ("dall-e-3", 1698785189, "system"),
)


def answer_model(knobs: Knobs, model: str) -> str:
    return knobs.response_model or SNAPSHOTS.get(model, model)


def _model_object(entry: tuple[str, int, str]) -> dict[str, object]:
    model_id, created, owned_by = entry
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model_object(entry) for entry in MODELS]})


async def retrieve_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    request[TAB].model = model_id
    for entry in MODELS:
        if entry[0] == model_id:
            return json_response(_model_object(entry))
    raise OpenAIError(
        404,
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
