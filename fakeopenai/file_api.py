"""The Files API: POST /v1/files (multipart), GET /v1/files, GET and DELETE /v1/files/{id},
and GET /v1/files/{id}/content.

What the fake assumes OpenAI does with a file: it keeps the bytes as sent and answers a
FileObject, `status` "processed" at once. A `batch` upload must be named `*.jsonl`; its lines
are not read until a batch uses it, so a file with bad lines uploads and the batch made from
it fails (`fakeopenai.batch_api`). A `batch` file expires 30 days after it was made unless
`expires_after` says otherwise; other files never, unless it does. A batch's output and error
files are listed and read like uploads (purpose `batch_output`). `assistants` files cannot
be downloaded. An unknown id is 404 `No such File object: <id>`. The list is newest first by
default, 10,000 a page at most, and walks on with `after` (the last id of a page).

What the fake does not do: expire files (the store is bounded instead, `fakeopenai.state`),
nor read stored files into prompts (`fakeopenai.files`). None of these calls bill anything.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from fakeopenai.errors import OpenAIError
from fakeopenai.files import unknown_file
from fakeopenai.protocol import json_response
from fakeopenai.state import STATE, FakeState, StoredFile

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# The purposes OpenAI refuses to hand back the bytes of.
NOT_DOWNLOADABLE = ("assistants",)
BATCH_FILE_SECONDS = 30 * 24 * 3600
MIN_EXPIRES_SECONDS = 3600
MAX_EXPIRES_SECONDS = 2_592_000
MAX_FILES_PAGE = 10_000
_ALNUM = string.ascii_letters + string.digits


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def store_file(
    state: FakeState,
    content: bytes,
    *,
    filename: str,
    purpose: str,
    expires_after: int | None = None,
) -> dict[str, Any]:
    """Keep `content` as a new file; its FileObject. `expires_after`: seconds from now."""
    created_at = int(time.time())
    info = {
        "id": new_file_id(),
        "object": "file",
        "bytes": len(content),
        "created_at": created_at,
        "expires_at": created_at + expires_after if expires_after is not None else None,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    state.store_file(StoredFile(info, content))
    return info


def stored_file(state: FakeState, file_id: str) -> StoredFile:
    stored = state.files.get(file_id)
    if stored is None:
        raise unknown_file(file_id)
    return stored


def expires_after_seconds(anchor: object, seconds: object, *, param: str) -> int:
    """An `expires_after` / `output_expires_after` policy: its seconds, checked as OpenAI
    checks them."""
    if anchor is None or seconds is None:
        missing = "anchor" if anchor is None else "seconds"
        raise OpenAIError(
            400,
            f"Missing required parameter: '{param}.{missing}'.",
            param=f"{param}.{missing}",
            code="missing_required_parameter",
        )
    if anchor != "created_at":
        raise OpenAIError(
            400,
            f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    return bounded_int(
        seconds, param=f"{param}.seconds", low=MIN_EXPIRES_SECONDS, high=MAX_EXPIRES_SECONDS
    )


def bounded_int(value: object, *, param: str, low: int, high: int) -> int:
    """A whole number in [low, high], given as a number or (query, form) as its digits."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if number is None:
        raise OpenAIError(
            400,
            f"Invalid type for '{param}': expected an integer, but got a string instead."
            if isinstance(value, str)
            else f"Invalid type for '{param}': expected an integer.",
            param=param,
            code="invalid_type",
        )
    if number < low:
        raise OpenAIError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, "
            f"but got {number} instead.",
            param=param,
            code="integer_below_min_value",
        )
    if number > high:
        raise OpenAIError(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, "
            f"but got {number} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return number


def cursor_page(objects: list[dict[str, Any]], *, limit: int, after: str | None) -> dict[str, Any]:
    """One page of a cursor list, as the SDK's CursorPage walks it: the objects after the one
    with id `after` (none if it is not there), `limit` of them."""
    if after is not None:
        ids = [obj["id"] for obj in objects]
        objects = objects[ids.index(after) + 1 :] if after in ids else []
    data = objects[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(objects) > limit,
    }


async def _form(request: web.Request) -> dict[str, tuple[str | None, bytes]]:
    """The multipart fields by name (the first of each): filename and bytes. The gateway has
    read the body already, so the cached bytes are parsed from a stream of their own."""
    if request.content_type != "multipart/form-data":
        raise OpenAIError(
            400,
            f"Invalid Content-Type header ({request.content_type}), expected "
            "multipart/form-data. (HINT: If you're using curl, you can pass -H "
            "'Content-Type: multipart/form-data')",
        )
    raw = await request.read()
    loop = asyncio.get_running_loop()
    # A limit above the body's size: the stream never asks its (absent) transport to pause.
    stream = StreamReader(BaseProtocol(loop), limit=max(2**16, len(raw) + 1), loop=loop)
    stream.feed_data(raw)
    stream.feed_eof()
    fields: dict[str, tuple[str | None, bytes]] = {}
    try:
        reader = MultipartReader(request.headers, stream)
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name and part.name not in fields:
                fields[part.name] = (part.filename, bytes(await part.read()))
    except (ValueError, AssertionError, asyncio.IncompleteReadError) as error:
        raise OpenAIError(400, f"Could not parse the multipart form: {error}") from None
    return fields


def _text(fields: dict[str, tuple[str | None, bytes]], name: str) -> str | None:
    field = fields.get(name)
    return field[1].decode("utf-8", "replace") if field is not None else None


def _missing(param: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


async def create_file(request: web.Request) -> web.Response:
    fields = await _form(request)
    if "file" not in fields:
        raise _missing("file")
    purpose = _text(fields, "purpose")
    if purpose is None:
        raise _missing("purpose")
    if purpose not in PURPOSES:
        listed = ", ".join(f"'{name}'" for name in PURPOSES)
        raise OpenAIError(400, f"'{purpose}' is not one of [{listed}] - 'purpose'", param="purpose")
    filename, content = fields["file"]
    filename = filename or "upload"
    expires_after = None
    anchor, seconds = (
        _text(fields, "expires_after[anchor]"),
        _text(fields, "expires_after[seconds]"),
    )
    if anchor is not None or seconds is not None:
        expires_after = expires_after_seconds(anchor, seconds, param="expires_after")
    if purpose == "batch":
        if not filename.endswith(".jsonl"):
            raise OpenAIError(400, "Invalid file format for Batch API. Must be .jsonl")
        if expires_after is None:
            expires_after = BATCH_FILE_SECONDS
    info = store_file(
        request.app[STATE],
        content,
        filename=filename,
        purpose=purpose,
        expires_after=expires_after,
    )
    return json_response(info)


async def list_files(request: web.Request) -> web.Response:
    query = request.query
    limit = bounded_int(
        query.get("limit", str(MAX_FILES_PAGE)), param="limit", low=1, high=MAX_FILES_PAGE
    )
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise OpenAIError(
            400,
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
            param="order",
            code="invalid_value",
        )
    purpose = query.get("purpose")
    # Kept in the order they were made, which is created_at order.
    files = [
        stored.info
        for stored in request.app[STATE].files.values()
        if purpose is None or stored.info["purpose"] == purpose
    ]
    if order == "desc":
        files.reverse()
    return json_response(cursor_page(files, limit=limit, after=query.get("after")))


async def retrieve_file(request: web.Request) -> web.Response:
    return json_response(stored_file(request.app[STATE], request.match_info["file_id"]).info)


async def file_content(request: web.Request) -> web.Response:
    stored = stored_file(request.app[STATE], request.match_info["file_id"])
    if stored.info["purpose"] in NOT_DOWNLOADABLE:
        raise OpenAIError(
            400, f"Not allowed to download files of purpose: {stored.info['purpose']}"
        )
    return web.Response(body=stored.content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    if request.app[STATE].drop_file(file_id) is None:
        raise unknown_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})
