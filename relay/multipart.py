"""Reading a multipart/form-data body the relay passes on untouched: its fields and files.

Image edits, variations and audio transcriptions are uploads. The proxy relays the client's
bytes as they came (the boundary and every part intact) and reads them only to meter the
request: the model, `n`, size and quality, and each file's name, size and first bytes (an
image's header says its size, a WAV's its length). The body is already in memory (bounded
by PROXY_MAX_BODY_BYTES before it was read), so parts are slices of it, never copies to disk.
"""

from __future__ import annotations

import dataclasses
from email.message import Message

# A form with more parts than this is not an OpenAI request (an edit takes 16 images).
MAX_PARTS = 256
MAX_FIELD_BYTES = 64 * 1024


class BadForm(ValueError):
    """The body is not the multipart form its Content-Type says."""


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    name: str  # the form field (`image`, `image[]`, `file`, `mask`)
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True, slots=True)
class Form:
    fields: dict[str, list[str]]
    files: list[Upload]

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def files_named(self, *names: str) -> list[Upload]:
        return [f for f in self.files if f.name in names]


def _params(header: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["content-type"] = header
    params = {k.lower(): v for k, v in message.get_params(failobj=[], header="content-type")[1:]}
    return message.get_content_type(), params


def boundary_of(content_type: str) -> bytes | None:
    kind, params = _params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 1 <= len(boundary) <= 200:
        return None
    return boundary.encode("latin-1", "replace")


def _disposition(value: str) -> tuple[str | None, str | None]:
    message = Message()
    message["content-disposition"] = value
    name = message.get_param("name", header="content-disposition")
    filename = message.get_filename()
    return (str(name) if name is not None else None), filename


def parse(body: bytes, content_type: str) -> Form:
    """The form's fields (text, each at most MAX_FIELD_BYTES) and files; BadForm if the body
    is not a multipart form with the Content-Type's boundary."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise BadForm("the Content-Type is not multipart/form-data with a boundary")
    delimiter = b"--" + boundary
    start = body.find(delimiter)
    if start == -1:
        raise BadForm("the body holds no part of the form")
    fields: dict[str, list[str]] = {}
    files: list[Upload] = []
    at = start + len(delimiter)
    for _ in range(MAX_PARTS + 1):
        if body[at : at + 2] == b"--":
            return Form(fields, files)
        end = body.find(b"\r\n" + delimiter, at)
        if end == -1:
            raise BadForm("the form's last part is not closed")
        part = body[at:end]
        at = end + 2 + len(delimiter)
        part = part.removeprefix(b"\r\n")
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise BadForm("a part of the form has no headers")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        name, filename = _disposition(headers.get("content-disposition", ""))
        if name is None:
            raise BadForm("a part of the form has no name")
        if filename is not None:
            files.append(Upload(name, filename, headers.get("content-type", ""), data))
        elif len(data) > MAX_FIELD_BYTES:
            raise BadForm(f"the form field '{name[:40]}' is longer than {MAX_FIELD_BYTES} bytes")
        else:
            fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    raise BadForm(f"the form has more than {MAX_PARTS} parts")
