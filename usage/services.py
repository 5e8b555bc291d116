"""Writes of prices and usage records."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from keys.services import Reservation, quota_settle_many
from usage.models import PRICE_COLUMNS, ModelPrice, UsageDaily, UsageRecord
from usage.pricing import price_book_reset

SHIPPED_PRICES = Path(__file__).resolve().parent / "data" / "openai_prices.csv"


@dataclasses.dataclass
class PriceLoadResult:
    created: int = 0
    unchanged: int = 0
    changed: int = 0


def _decimal(text: str | None) -> Decimal | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a price: {text!r}") from None


@transaction.atomic
def prices_load(
    *, path: Path = SHIPPED_PRICES, effective_from: dt.datetime | None = None
) -> PriceLoadResult:
    """Load a price file (the shipped one by default). A model whose price differs from the
    one in force gets a new row from `effective_from` (now by default), so past records keep
    the price they were billed at; a model seen for the first time is priced from always."""
    from usage.models import ALWAYS

    when = effective_from or timezone.now()
    result = PriceLoadResult()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "model" not in (reader.fieldnames or []) or "input_per_1m" not in (
            reader.fieldnames or []
        ):
            raise ValueError(f"{path}: needs at least the columns model and input_per_1m")
        for line in reader:
            model = (line.get("model") or "").strip()
            if not model:
                continue
            rates = {c: _decimal(line.get(c)) for c in PRICE_COLUMNS if c in line}
            extra = {
                "mode": (line.get("mode") or "").strip(),
                "deprecation_date": (line.get("deprecation_date") or "").strip() or None,
                "max_input_tokens": int(line["max_input_tokens"])
                if (line.get("max_input_tokens") or "").strip()
                else None,
            }
            current = (
                ModelPrice.objects.filter(model=model, effective_from__lte=when)
                .order_by("-effective_from")
                .first()
            )
            if current is None:
                ModelPrice.objects.create(model=model, effective_from=ALWAYS, **rates, **extra)
                result.created += 1
            elif all(getattr(current, c) == v for c, v in rates.items()):
                result.unchanged += 1
            else:
                ModelPrice.objects.update_or_create(
                    model=model, effective_from=when, defaults={**rates, **extra}
                )
                result.changed += 1
    price_book_reset()
    return result


def usage_record_create(*, reservation: Reservation | None, record: UsageRecord) -> UsageRecord:
    """Save one request's record; see `usage_records_create`."""
    usage_records_create(items=[(reservation, record)])
    return record


def _rollup_deltas(record: UsageRecord) -> dict[str, int | Decimal]:
    return {
        "requests": 1,
        "errors": 1 if record.status_code >= 400 else 0,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_usd": record.cost_usd or Decimal(0),
        "unpriced_requests": 1 if record.cost_usd is None and record.status_code < 400 else 0,
    }


@transaction.atomic
def usage_records_create(*, items: list[tuple[Reservation | None, UsageRecord]]) -> None:
    """Save records, settle their reservations and add them to the day's rollups, in one
    transaction: the ledgers' spend, the records and the rollups always agree.

    The relay hands over whatever records finished since its last write, so under load one
    transaction carries many records and each ledger and rollup row is touched once.
    """
    records = [record for _, record in items]
    UsageRecord.objects.bulk_create(records)
    rollups: dict[tuple, dict[str, int | Decimal]] = {}
    for record in records:
        key = (
            record.created_at.astimezone(dt.UTC).date(),
            record.user_id,
            record.api_key_id,
            record.response_model or record.model,
        )
        total = rollups.setdefault(key, dict.fromkeys(_rollup_deltas(record), 0))
        for field, value in _rollup_deltas(record).items():
            total[field] += value
    # Sorted, so two writers lock the rollup rows they share in the same order.
    for (day, user_id, api_key_id, model), deltas in sorted(
        rollups.items(), key=lambda kv: repr(kv[0])
    ):
        # UPDATE first, INSERT on a miss: concurrent writers never lose a count, because the
        # increment happens in the database, not in Python.
        row = {"day": day, "user_id": user_id, "api_key_id": api_key_id, "model": model}
        increments = {f: F(f) + v for f, v in deltas.items()}
        if UsageDaily.objects.filter(**row).update(**increments):
            continue
        try:
            with transaction.atomic():
                UsageDaily.objects.create(**row, **deltas)
        except IntegrityError:  # another writer inserted the day's row first
            UsageDaily.objects.filter(**row).update(**increments)
    # Last, so the ledger rows that reservations wait for are locked only until the commit.
    quota_settle_many(
        settlements=[
            (reservation, record.cost_usd, record.prompt_tokens + record.completion_tokens)
            for reservation, record in items
            if reservation is not None
        ]
    )
