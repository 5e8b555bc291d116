"""Every CSV the project writes: usage records, streamed, for `GET /api/usage/?format=csv` and
the admin, and the dashboards' tables. All of it goes through `csv_text`, so every cell is
written by `csv_cell`, which defuses spreadsheet formulas.

Records' rows are made by the same serializer as the JSON list, so a CSV cell is the JSON value
written as text: null is empty, booleans are `true`/`false`, costs keep their decimal string.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer

from usage.models import UsageRecord
from usage.selectors import usage_records_after

# Records read per query while streaming: large enough to keep queries few, small enough to
# keep the first bytes quick and the memory flat.
BATCH = 1000
# A spreadsheet runs a cell that starts with one of these as a formula; a requested model
# name is whatever the client sent, so such text is quoted (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_text(rows: Iterable[Mapping[str, Any]], columns: list[str], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


def csv_download(
    rows: Iterable[Mapping[str, Any]], columns: list[str], *, filename: str
) -> HttpResponse:
    """A table small enough to build at once (a dashboard's) as a CSV download. The file name
    may carry a username: only letters, digits, `.`, `_` and `-` of it are kept."""
    response = HttpResponse(
        csv_text(rows, columns, header=True), content_type="text/csv; charset=utf-8"
    )
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    response["Content-Disposition"] = f'attachment; filename="{safe}"'
    return response


class CsvRenderer(BaseRenderer):
    """Lets content negotiation accept `?format=csv`; the export itself is streamed by the
    view. An error met before streaming starts is still answered as JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if isinstance(data, list) and all(isinstance(row, Mapping) for row in data):
            columns = list(data[0]) if data else []
            return csv_text(data, columns, header=True).encode()
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return json.dumps(data, default=str).encode()


def _batch_csv(
    records: QuerySet[UsageRecord],
    serializer_class: type[serializers.Serializer],
    columns: list[str],
    after: tuple[Any, int] | None,
    header: bool,
) -> tuple[str, tuple[Any, int] | None]:
    batch = usage_records_after(records, after=after, limit=BATCH)
    text = csv_text(serializer_class(batch, many=True).data, columns, header=header)
    if len(batch) < BATCH:
        return text, None
    return text, (batch[-1].created_at, batch[-1].pk)


def _csv_lines(
    records: QuerySet[UsageRecord], serializer_class: type[serializers.Serializer]
) -> Iterator[str]:
    columns = list(serializer_class().fields)
    text, after = _batch_csv(records, serializer_class, columns, None, True)
    yield text
    while after is not None:
        text, after = _batch_csv(records, serializer_class, columns, after, False)
        yield text


async def _csv_lines_async(
    records: QuerySet[UsageRecord], serializer_class: type[serializers.Serializer]
) -> AsyncIterator[str]:
    # Served by ASGI, a synchronous iterator would be read whole into memory before the
    # first byte goes out (Django's StreamingHttpResponse rule); one query per batch instead.
    columns = list(serializer_class().fields)
    batch_csv = sync_to_async(_batch_csv)
    text, after = await batch_csv(records, serializer_class, columns, None, True)
    yield text
    while after is not None:
        text, after = await batch_csv(records, serializer_class, columns, after, False)
        yield text


def csv_streaming_response(
    request: HttpRequest,
    records: QuerySet[UsageRecord],
    serializer_class: type[serializers.Serializer],
    *,
    name: str = "usage",
) -> StreamingHttpResponse:
    """Every record of `records`, newest first, one CSV row each, as a download."""
    if isinstance(request, ASGIRequest):
        content: Iterable[str] | AsyncIterator[str] = _csv_lines_async(records, serializer_class)
    else:
        content = _csv_lines(records, serializer_class)
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    return response
