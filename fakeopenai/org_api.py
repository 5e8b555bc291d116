"""OpenAI's organization Usage and Costs API, counted from the fake's own bills.

`GET /v1/organization/usage/{family}` (completions, embeddings, moderations, images,
audio_speeches, audio_transcriptions) and `GET /v1/organization/costs`, in OpenAI's shapes:
a page of daily buckets (`{"object": "page", "data": [{"object": "bucket", "start_time",
"end_time", "results": [...]}], "has_more", "next_page"}`), one bucket per UTC day from
`start_time` (required, Unix seconds) to `end_time` (exclusive; default the end of today), empty days
included. `limit` buckets a page (default 7, as OpenAI's; at most 31 for usage, 180 for
costs), then `next_page` is the cursor to pass back as `page`. Only `bucket_width=1d` is
served. `group_by` (repeated, `group_by[]`, or comma-separated) splits a bucket's results: by
`model` (and `batch`, `service_tier`; images also `size`, `source`) for usage, by `line_item`
for costs; fields not grouped by are null, as OpenAI sends them. Only the admin key
(`FakeState.admin_key`) is accepted: any other key, the project key included, is a 401.

What the fake assumes OpenAI reports, from each bill (`fakeopenai.state`) of a request it did
not refuse (a refused one counts nothing, as it bills nothing), on the UTC day it came in:
- the family by path: chat completions, completions, Responses and Realtime responses are
  completions; images, speech and transcriptions (translations too) their own families;
  files, batches and models none. A batch's lines count in their family, `batch: true`.
- `model` is the dated snapshot the alias resolves to (`catalog.SNAPSHOTS`), as OpenAI
  names usage; a request's `fake.response_model` knob changes only its answer, not this.
- completions: `input_tokens` / `output_tokens` are the text ones (the bill's tokens less its
  audio), `input_audio_tokens` / `output_audio_tokens` the audio; `input_cached_tokens` what
  a bill says was cached (a Realtime response's; other bills carry none). Embeddings and
  moderations: `input_tokens`. Images: `images`. Speech: `characters`. Transcriptions:
  `seconds`. Every family: `num_model_requests`.
- costs: the fake's own price table below (`PRICES`, USD per 1M tokens, not the proxy's
  table), line items `"<model>, input"` (uncached text and audio input), `"<model>, cached
  input"` and `"<model>, output"`; a batch line at half those rates (OpenAI's batch
  discount). A model outside the table costs nothing. Amounts are exact decimal strings (as
  OpenAI sends `amount.value` from its ledger).

`POST /_fake/org/adjust` shifts the bill, for drift tests: a JSON object with `model`
(required; an alias is resolved as above), `day` (`YYYY-MM-DD`, UTC; default today),
`family` (default `completions`), and any of `requests`, `input_tokens`, `output_tokens`
(added to the family's counts; may be negative) and `usd` (a decimal string added to costs
as the line item `"<model>, adjustment"`; without it the tokens added are priced as above).
`POST /_fake/reset` forgets the adjustments with the bills.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from fakeopenai.catalog import SNAPSHOTS
from fakeopenai.errors import OpenAIError
from fakeopenai.protocol import json_response
from fakeopenai.state import STATE, FakeState

DEFAULT_ADMIN_KEY = "sk-admin-fake-upstream"
DAY = 86_400
MILLION = Decimal(1_000_000)
DEFAULT_LIMIT = 7
MAX_LIMIT = {"usage": 31, "costs": 180}

# USD per 1M tokens (input, cached input, output): the fake's own, read from OpenAI's pricing
# page for the models the tests use; the proxy prices from its own table (usage.prices).
PRICES: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    "gpt-4o-mini-2024-07-18": (Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
    "gpt-4o-2024-08-06": (Decimal("2.50"), Decimal("1.25"), Decimal("10.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("0.10"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.025"), Decimal("0.40")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal(0), Decimal(0)),
    "text-embedding-3-large": (Decimal("0.13"), Decimal(0), Decimal(0)),
    "omni-moderation-2024-09-26": (Decimal(0), Decimal(0), Decimal(0)),
}
BATCH_RATE = Decimal("0.5")

FAMILIES = (
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
)
_FAMILY_BY_PATH = (
    ("/v1/chat/completions", "completions"),
    ("/v1/completions", "completions"),
    ("/v1/responses", "completions"),
    ("/v1/realtime", "completions"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/moderations", "moderations"),
    ("/v1/images/", "images"),
    ("/v1/audio/speech", "audio_speeches"),
    ("/v1/audio/transcriptions", "audio_transcriptions"),
    ("/v1/audio/translations", "audio_transcriptions"),
)
# The grouping fields each family's results carry (null unless grouped by).
_GROUPS = {
    "completions": ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier"),
    "images": ("project_id", "user_id", "api_key_id", "model", "size", "source"),
}
_DEFAULT_GROUPS = ("project_id", "user_id", "api_key_id", "model")
_COUNTS = {
    "completions": (
        "input_tokens",
        "output_tokens",
        "input_cached_tokens",
        "input_audio_tokens",
        "output_audio_tokens",
    ),
    "embeddings": ("input_tokens",),
    "moderations": ("input_tokens",),
    "images": ("images",),
    "audio_speeches": ("characters",),
    "audio_transcriptions": ("seconds",),
}
_IMAGE_SOURCES = {"generations": "image.generation", "edits": "image.edit"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def family_of(path: str) -> str | None:
    for prefix, family in _FAMILY_BY_PATH:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return family
    return None


def snapshot(model: str) -> str:
    return SNAPSHOTS.get(model, model)


# -- what the bills say, as usage entries -----------------------------------------------------


def _usage_entries(state: FakeState) -> Iterable[dict[str, Any]]:
    """One entry per billed request and per adjustment: its family, UTC time, grouping values
    and counts."""
    for bill in state.bills.values():
        family = family_of(bill["path"])
        if family is None or bill["outcome"] == "error" or not bill.get("model"):
            continue
        audio_in, audio_out = bill["audio_input_tokens"], bill["audio_output_tokens"]
        counts = {
            "num_model_requests": 1,
            "input_tokens": bill["prompt_tokens"] - audio_in,
            "output_tokens": bill["completion_tokens"] - audio_out,
            "input_cached_tokens": bill.get("cached_tokens", 0),
            "input_audio_tokens": audio_in,
            "output_audio_tokens": audio_out,
            "images": bill.get("images", 0),
            "characters": bill.get("characters", 0),
            "seconds": bill.get("audio_seconds", 0),
        }
        groups = {
            "model": snapshot(bill["model"]),
            "batch": "batch_id" in bill,
            "service_tier": "default",
            "size": bill.get("image_size"),
            "source": _IMAGE_SOURCES.get(bill["path"].rsplit("/", 1)[-1], "image.variation"),
        }
        yield {"family": family, "time": bill["created_at"], "groups": groups, "counts": counts}
    yield from state.org_adjustments


def _in_range(entries: Iterable[dict[str, Any]], start: int, end: int) -> list[dict[str, Any]]:
    return [entry for entry in entries if start <= entry["time"] < end]


def _usage_results(family: str, entries: list[dict[str, Any]], group_by: set[str]) -> list:
    fields = _GROUPS.get(family, _DEFAULT_GROUPS)
    sums: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in entries:
        if entry["family"] != family:
            continue
        key = tuple(entry["groups"].get(name) if name in group_by else None for name in fields)
        for name, value in entry["counts"].items():
            sums[key][name] += value
    results = []
    for key, counts in sums.items():
        result: dict[str, Any] = {"object": f"organization.usage.{family}.result"}
        result.update({name: counts[name] for name in _COUNTS[family]})
        result["num_model_requests"] = counts["num_model_requests"]
        result.update(zip(fields, key, strict=True))
        results.append(result)
    return results


def _line_items(entry: dict[str, Any]) -> list[tuple[str, Decimal]]:
    model = entry["groups"]["model"]
    if "usd" in entry:
        return [(f"{model}, adjustment", entry["usd"])]
    counts = entry["counts"]
    rates = PRICES.get(model)
    if rates is None:
        return []
    scale = BATCH_RATE if entry["groups"].get("batch") else Decimal(1)
    input_rate, cached_rate, output_rate = (rate * scale / MILLION for rate in rates)
    cached = counts.get("input_cached_tokens", 0)
    uncached = counts.get("input_tokens", 0) + counts.get("input_audio_tokens", 0) - cached
    output = counts.get("output_tokens", 0) + counts.get("output_audio_tokens", 0)
    items = [(f"{model}, input", uncached * input_rate), (f"{model}, output", output * output_rate)]
    if cached:
        items.append((f"{model}, cached input", cached * cached_rate))
    return items


def _cost_results(entries: list[dict[str, Any]], group_by: set[str]) -> list[dict[str, Any]]:
    amounts: dict[str | None, Decimal] = defaultdict(Decimal)
    for entry in entries:
        for line_item, amount in _line_items(entry):
            amounts[line_item if "line_item" in group_by else None] += amount
    if "line_item" not in group_by and not amounts:
        return []
    return [
        {
            "object": "organization.costs.result",
            "amount": {"value": str(amount), "currency": "usd"},
            "line_item": line_item,
            "project_id": None,
        }
        for line_item, amount in amounts.items()
    ]


# -- the query and its pages ------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise OpenAIError(400, f"Invalid value for '{name}': {raw!r}.", param=name) from None


def _group_by(request: web.Request, allowed: Iterable[str]) -> set[str]:
    values = request.query.getall("group_by", []) + request.query.getall("group_by[]", [])
    fields = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = fields - set(allowed)
    if unknown:
        raise OpenAIError(
            400, f"Invalid group_by field(s): {', '.join(sorted(unknown))}.", param="group_by"
        )
    return fields


def _cursor(start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(start).encode()).decode()


def _from_cursor(page: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(page.removeprefix("page_").encode()))
    except (ValueError, binascii.Error):
        raise OpenAIError(400, f"Invalid page cursor: {page!r}.", param="page") from None


def _page(
    request: web.Request, kind: str, results: Callable[[list[dict[str, Any]]], list]
) -> web.Response:
    start = _int_param(request, "start_time")
    if start is None:
        raise OpenAIError(400, "Missing required parameter: 'start_time'.", param="start_time")
    # Without end_time, up to the end of today: what was billed so far, this second too.
    now = int(time.time())
    end = _int_param(request, "end_time", now - now % DAY + DAY)
    if request.query.get("bucket_width", "1d") != "1d":
        raise OpenAIError(400, "The fake serves bucket_width=1d only.", param="bucket_width")
    limit = _int_param(request, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT[kind]:
        raise OpenAIError(400, f"'limit' must be between 1 and {MAX_LIMIT[kind]}.", param="limit")
    if end <= start:
        raise OpenAIError(400, "'end_time' must be after 'start_time'.", param="end_time")
    # Buckets are whole UTC days, the first the one start_time falls in.
    first = start - start % DAY
    page = request.query.get("page")
    bucket_start = _from_cursor(page) if page else first
    entries = _in_range(_usage_entries(request.app[STATE]), start, end)
    data = []
    while bucket_start < end and len(data) < limit:
        bucket_end = bucket_start + DAY
        in_bucket = [e for e in entries if bucket_start <= e["time"] < bucket_end]
        data.append(
            {
                "object": "bucket",
                "start_time": bucket_start,
                "end_time": bucket_end,
                "results": results(in_bucket),
            }
        )
        bucket_start = bucket_end
    has_more = bucket_start < end
    return json_response(
        {
            "object": "page",
            "data": data,
            "has_more": has_more,
            "next_page": _cursor(bucket_start) if has_more else None,
        }
    )


async def usage(request: web.Request) -> web.Response:
    family = request.match_info["family"]
    if family not in FAMILIES:
        raise OpenAIError(404, f"Invalid URL (GET {request.path})", code="unknown_url")
    group_by = _group_by(request, _GROUPS.get(family, _DEFAULT_GROUPS))
    return _page(request, "usage", lambda entries: _usage_results(family, entries, group_by))


async def costs(request: web.Request) -> web.Response:
    group_by = _group_by(request, ("project_id", "line_item"))
    return _page(request, "costs", lambda entries: _cost_results(entries, group_by))


async def admin_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The organization API's door: the admin key only, and no bill (it is not a model)."""
    try:
        if request.match_info.http_exception is not None:
            raise OpenAIError(
                404, f"Invalid URL ({request.method} {request.path})", code="unknown_url"
            )
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        admin_key = request.app[STATE].admin_key
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), admin_key.encode()
        ):
            raise OpenAIError(
                401,
                "Incorrect API key provided. The organization Usage and Costs API needs an "
                "admin key (https://platform.openai.com/settings/organization/admin-keys).",
                code="invalid_api_key",
            )
        return await handler(request)
    except OpenAIError as error:
        return error.response()


# -- the drift knob ---------------------------------------------------------------------------


async def adjust(request: web.Request) -> web.Response:
    """POST /_fake/org/adjust: shift the organization's bill (see the module's docstring)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    try:
        adjustment = _adjustment(body)
    except OpenAIError as error:
        return error.response()
    request.app[STATE].org_adjustments.append(adjustment)
    return json_response({"ok": True, "adjustments": len(request.app[STATE].org_adjustments)})


def _adjustment(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise OpenAIError(400, "An adjustment is a JSON object with a 'model'.", param="model")
    family = body.get("family", "completions")
    if family not in FAMILIES:
        raise OpenAIError(400, f"Unknown family {family!r}.", param="family")
    try:
        day = dt.date.fromisoformat(body["day"]) if "day" in body else dt.datetime.now(dt.UTC)
    except (TypeError, ValueError):
        raise OpenAIError(400, "'day' is a date, YYYY-MM-DD.", param="day") from None
    midday = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    counts = {"num_model_requests": body.get("requests", 0)}
    for name in ("input_tokens", "output_tokens"):
        counts[name] = body.get(name, 0)
    if not all(isinstance(value, int) for value in counts.values()):
        raise OpenAIError(400, "requests and tokens are integers.")
    entry: dict[str, Any] = {
        "family": family,
        "time": int(midday.timestamp()),
        "groups": {"model": snapshot(body["model"]), "batch": False, "service_tier": "default"},
        "counts": counts,
    }
    if "usd" in body:
        try:
            entry["usd"] = Decimal(str(body["usd"]))
        except InvalidOperation:
            raise OpenAIError(400, "'usd' is a decimal string.", param="usd") from None
    return entry
