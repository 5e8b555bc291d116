"""Files sent inside a prompt: Responses `input_file` parts and chat `file` parts.

What the fake assumes OpenAI bills for a file: its extracted text and page images, which
the fake cannot make, so it bills one input token for every 3 bytes of the file sent as
`file_data` (rounded up). The fake keeps uploaded files (`fakeopenai.file_api`) but never
reads one into a prompt: a `file_id` is answered 404 as OpenAI answers an id it does not
know, stored or not (the proxy refuses file ids itself, so no test needs one billed), and a
`file_url` is refused rather than fetched or billed as nothing.
"""

from __future__ import annotations

import math

from fakeopenai.dataurls import decode_base64
from fakeopenai.errors import OpenAIError

BYTES_PER_TOKEN = 3


def unknown_file(file_id: object) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id}", param="id")


def file_tokens(part: dict[str, object]) -> int:
    """A Responses `{"type": "input_file", "file_data": ...}` part, or a chat
    `{"type": "file", "file": {"file_data": ...}}` part."""
    fields = part.get("file") if part.get("type") == "file" else part
    if not isinstance(fields, dict):
        raise OpenAIError(
            400, "Missing required parameter: 'file'.", code="missing_required_parameter"
        )
    if fields.get("file_data") is not None:
        data = decode_base64(fields["file_data"], what="file data")
        return math.ceil(len(data) / BYTES_PER_TOKEN)
    if fields.get("file_id") is not None:
        raise unknown_file(fields["file_id"])
    if fields.get("file_url") is not None:
        raise OpenAIError(
            400,
            "The fake upstream does not fetch file_url: send the file as file_data.",
            param="file_url",
        )
    raise OpenAIError(
        400,
        "A file part needs one of file_data, file_id or file_url.",
        code="missing_required_parameter",
    )
