"""Reconciliation: the proxy's records held against OpenAI's own bill, per UTC day × model.

The proxy's side counts the records of requests that ended (never the pending rows of
requests in flight) that OpenAI bills: answered below 400, or cut off by a client that left
(OpenAI bills the input it read). A record is counted under the model OpenAI names
it by, the dated snapshot it answered with (`response_model`), else the model asked for:
OpenAI's usage API reports `gpt-4o-mini-2024-07-18`, never `gpt-4o-mini`. Tokens are input
and output, text and audio together; USD the records' `cost_usd` (unpriced ones add nothing).

Differences are OpenAI's figure minus the proxy's: positive when OpenAI billed more than the
proxy recorded. A row drifts when requests or tokens differ at all, or USD by at least a
micro-dollar (the finest a dashboard shows; OpenAI's ledger carries more places).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce, NullIf, TruncDate
from django.utils import timezone

from keys.money import MICRO_USD
from usage.models import (
    ReconciliationRow,
    ReconciliationRun,
    ReconciliationStatus,
    UsageRecord,
)

if TYPE_CHECKING:  # OpenAI's side is read by relay/ (the only package that speaks to OpenAI)
    from relay.org_usage import OpenAIUsage

    Fetch = Callable[..., dict[tuple[dt.date, str], OpenAIUsage]]


@dataclasses.dataclass
class ProxyUsage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = Decimal(0)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def proxy_usage_by_day_model(
    *, start: dt.date, end: dt.date
) -> dict[tuple[dt.date, str], ProxyUsage]:
    """What the proxy recorded from `start` to `end` (UTC days, both included) of what OpenAI
    bills, by day and the model OpenAI names it by."""
    rows = (
        UsageRecord.objects.completed()
        .filter(created_at__gte=_midnight(start), created_at__lt=_midnight(end) + dt.timedelta(1))
        .filter(Q(status_code__lt=400) | Q(client_disconnected=True))
        .annotate(
            day=TruncDate("created_at", tzinfo=dt.UTC),
            billed_model=Coalesce(NullIf("response_model", Value("")), "model"),
        )
        .exclude(billed_model="")
        .values("day", "billed_model")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("prompt_tokens"),
            output_tokens=Sum("completion_tokens"),
            usd=Sum("cost_usd"),
        )
        .order_by()
    )
    return {
        (row["day"], row["billed_model"]): ProxyUsage(
            requests=row["requests"],
            input_tokens=row["input_tokens"] or 0,
            output_tokens=row["output_tokens"] or 0,
            usd=row["usd"] or Decimal(0),
        )
        for row in rows
    }


def _difference(openai: int | None, proxy: int) -> int | None:
    return None if openai is None else openai - proxy


def reconciliation_rows(
    *,
    proxy: dict[tuple[dt.date, str], ProxyUsage],
    openai: dict[tuple[dt.date, str], OpenAIUsage],
) -> list[ReconciliationRow]:
    """One unsaved row per day × model either side knows of, in day and model order."""
    rows = []
    for day, model in sorted(proxy.keys() | openai.keys()):
        ours = proxy.get((day, model), ProxyUsage())
        theirs = openai.get((day, model))
        if theirs is None:  # OpenAI reports nothing: none of anything
            theirs = ProxyUsage()
        row = ReconciliationRow(
            day=day,
            model=model,
            proxy_requests=ours.requests,
            proxy_input_tokens=ours.input_tokens,
            proxy_output_tokens=ours.output_tokens,
            proxy_usd=ours.usd,
            openai_requests=theirs.requests,
            openai_input_tokens=theirs.input_tokens,
            openai_output_tokens=theirs.output_tokens,
            openai_usd=theirs.usd,
            requests_difference=theirs.requests - ours.requests,
            input_tokens_difference=_difference(theirs.input_tokens, ours.input_tokens),
            output_tokens_difference=_difference(theirs.output_tokens, ours.output_tokens),
            usd_difference=theirs.usd - ours.usd,
        )
        row.drift = bool(
            row.requests_difference
            or row.input_tokens_difference
            or row.output_tokens_difference
            or abs(row.usd_difference) >= MICRO_USD
        )
        rows.append(row)
    return rows


def reconciliation_run(*, start: dt.date, end: dt.date, fetch: Fetch) -> ReconciliationRun:
    """Compare `start` to `end` and store the run with its rows. When OpenAI's side cannot be
    read, the run is stored as failed with the reason, and the error raised again."""
    run = ReconciliationRun.objects.create(start_day=start, end_day=end, started_at=timezone.now())
    try:
        openai = fetch(start=start, end=end)
    except Exception as exc:
        run.status, run.error, run.finished_at = (
            ReconciliationStatus.FAILED,
            str(exc),
            timezone.now(),
        )
        run.save(update_fields=["status", "error", "finished_at"])
        raise
    rows = reconciliation_rows(proxy=proxy_usage_by_day_model(start=start, end=end), openai=openai)
    with transaction.atomic():
        for row in rows:
            row.run = run
        ReconciliationRow.objects.bulk_create(rows)
        run.status, run.finished_at = ReconciliationStatus.DONE, timezone.now()
        run.save(update_fields=["status", "finished_at"])
    return run


def reconciliation_latest() -> ReconciliationRun | None:
    """The last run that compared (a failed run has no rows to show)."""
    return ReconciliationRun.objects.filter(status=ReconciliationStatus.DONE).first()
