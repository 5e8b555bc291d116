"""OpenAI's own account of the organization's usage: its Usage and Costs API, read with the
admin key (OPENAI_ADMIN_KEY) from OPENAI_BASE_URL, in daily buckets, every page.

`org_usage_fetch` answers, per UTC day and model (the dated snapshot name OpenAI reports),
requests, input and output tokens (text and audio together, as the proxy records them) and
USD. Images and audio families report images, characters or seconds rather than tokens, so a
model seen only there has no tokens (None). Costs come by line item (`"gpt-4o-mini-2024-07-18,
input"`): the model is what comes before the last comma, less a modality word (`"...
audio, input"`); a line item naming no model (`"web search tool calls"`) is a row of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from django.conf import settings

from relay import upstream

USAGE_FAMILIES = (
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
)
# The families whose results count tokens: (input fields, output fields).
_TOKENS = {
    "completions": (
        ("input_tokens", "input_audio_tokens"),
        ("output_tokens", "output_audio_tokens"),
    ),
    "embeddings": (("input_tokens",), ()),
    "moderations": (("input_tokens",), ()),
}
_MODALITIES = (" audio", " image", " text")
# A runaway cursor (one that never says has_more: false) stops here rather than never.
MAX_PAGES = 1000
REQUEST_SECONDS = 60


class OrgUsageError(Exception):
    """Why OpenAI's usage could not be read, in one line for the operator."""


@dataclasses.dataclass
class OpenAIUsage:
    """One day × model as OpenAI reports it."""

    requests: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    usd: Decimal = Decimal(0)

    def add_tokens(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens = (self.input_tokens or 0) + input_tokens
        self.output_tokens = (self.output_tokens or 0) + output_tokens


def _day(start_time: int) -> dt.date:
    return dt.datetime.fromtimestamp(start_time, dt.UTC).date()


def model_of_line_item(line_item: str | None) -> str:
    if not line_item:
        return ""
    model = line_item.rsplit(",", 1)[0].strip() if "," in line_item else line_item.strip()
    for word in _MODALITIES:
        model = model.removesuffix(word)
    return model


def _amount(value: Any) -> Decimal:
    # OpenAI sends amount.value as a number in its docs and as a long decimal string live;
    # either is read as a Decimal, never through a float.
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise OrgUsageError(f"OpenAI sent an amount that is not a number: {value!r}") from None


async def _pages(
    session: aiohttp.ClientSession, path: str, params: dict[str, str]
) -> list[dict[str, Any]]:
    """Every bucket of `path`, following next_page until has_more is false."""
    buckets: list[dict[str, Any]] = []
    page: str | None = None
    headers = {"Authorization": f"Bearer {settings.OPENAI_ADMIN_KEY}"}
    for _ in range(MAX_PAGES):
        query = {**params, **({"page": page} if page else {})}
        url = upstream.url_for(path)
        try:
            async with (
                asyncio.timeout(REQUEST_SECONDS),
                session.get(url, params=query, headers=headers) as response,
            ):
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise OrgUsageError(f"could not reach OpenAI at {url}: {reason}") from None
        body = _json(text, path)
        if status != 200:
            message = body.get("error", {}).get("message") if isinstance(body, dict) else None
            if status in (401, 403):
                raise OrgUsageError(
                    f"OpenAI refused OPENAI_ADMIN_KEY ({status}) on GET /{path}: {message}"
                )
            raise OrgUsageError(f"OpenAI answered {status} to GET /{path}: {message or text[:200]}")
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise OrgUsageError(f"OpenAI sent GET /{path} a body that is not a page of buckets")
        buckets.extend(body["data"])
        page = body.get("next_page")
        if not body.get("has_more") or not page:
            return buckets
    raise OrgUsageError(f"GET /{path} was still paging after {MAX_PAGES} pages")


def _json(text: str, path: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal) if text else {}
    except ValueError:
        raise OrgUsageError(
            f"OpenAI answered GET /{path} with something that is not JSON"
        ) from None


async def _fetch(start: dt.date, end: dt.date) -> dict[tuple[dt.date, str], OpenAIUsage]:
    first = dt.datetime.combine(start, dt.time(), dt.UTC)
    after = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    params = {
        "start_time": str(int(first.timestamp())),
        "end_time": str(int(after.timestamp())),
        "bucket_width": "1d",
    }
    rows: dict[tuple[dt.date, str], OpenAIUsage] = {}
    session = upstream.session()
    try:
        for family in USAGE_FAMILIES:
            path = f"organization/usage/{family}"
            for bucket in await _pages(session, path, {**params, "group_by": "model"}):
                day = _day(bucket["start_time"])
                for result in bucket.get("results") or []:
                    row = rows.setdefault((day, result.get("model") or ""), OpenAIUsage())
                    row.requests += int(result.get("num_model_requests") or 0)
                    if family in _TOKENS:
                        inputs, outputs = _TOKENS[family]
                        row.add_tokens(
                            sum(int(result.get(name) or 0) for name in inputs),
                            sum(int(result.get(name) or 0) for name in outputs),
                        )
        costs = await _pages(session, "organization/costs", {**params, "group_by": "line_item"})
        for bucket in costs:
            day = _day(bucket["start_time"])
            for result in bucket.get("results") or []:
                model = model_of_line_item(result.get("line_item"))
                row = rows.setdefault((day, model), OpenAIUsage())
                row.usd += _amount((result.get("amount") or {}).get("value", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise OrgUsageError(f"OpenAI sent a bucket this client cannot read: {exc!r}") from None
    finally:
        await upstream.close()
    return rows


def org_usage_fetch(*, start: dt.date, end: dt.date) -> dict[tuple[dt.date, str], OpenAIUsage]:
    """OpenAI's usage from `start` to `end` (UTC days, both included), by day and model.
    Raises OrgUsageError, whose message is one line, when it cannot be read."""
    if not settings.OPENAI_ADMIN_KEY:
        raise OrgUsageError(
            "OPENAI_ADMIN_KEY is not set: reconciliation reads OpenAI's organization Usage and "
            "Costs API, which needs an admin key"
        )
    return asyncio.run(_fetch(start, end))
