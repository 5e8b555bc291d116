"""Re-pricing past records after a price correction (`manage.py reprice`).

A record keeps the price row it was billed with. When a price turns out wrong, the operator
corrects the row (or adds one effective from the right date) and re-prices the records of
the dates concerned: each record's cost is computed again from its recorded usage with the
price table as it is now, exactly as the relay bills (`PriceBook.bill`), and the difference
goes, in the same transaction as the record, into its day's rollup and into the key's and
the user's ledger rows of the period it was billed in. A run can be repeated: a record
already at its price moves nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.db import transaction

from keys.models import QuotaLedger, period_start
from keys.services import LedgerMove, quota_settle
from usage.models import UsageRecord
from usage.pricing import PriceBook, TokenUsage, price_book, price_book_reset
from usage.services import rollups_add

_BATCH = 500
ZERO = Decimal(0)


@dataclasses.dataclass
class ModelChange:
    records: int = 0
    before: Decimal = ZERO  # priced records' cost before (unpriced count as 0)
    after: Decimal = ZERO
    became_unpriced: int = 0
    became_priced: int = 0


@dataclasses.dataclass
class RepriceResult:
    examined: int = 0
    changed: int = 0
    ledgers: set[int] = dataclasses.field(default_factory=set)
    by_model: dict[str, ModelChange] = dataclasses.field(
        default_factory=lambda: defaultdict(ModelChange)
    )

    @property
    def delta(self) -> Decimal:
        return sum((c.after - c.before for c in self.by_model.values()), ZERO)


def _usage(record: UsageRecord) -> TokenUsage:
    return TokenUsage(
        prompt=record.prompt_tokens,
        cached=record.cached_tokens,
        completion=record.completion_tokens,
        reasoning=record.reasoning_tokens,
        cache_write=record.cache_write_tokens,
        audio_input=record.audio_input_tokens,
        audio_output=record.audio_output_tokens,
        audio_cached=record.audio_cached_tokens,
        tool_calls=record.tool_calls or {},
        image_input=record.image_input_tokens,
        image_output=record.image_output_tokens,
        characters=record.characters,
        audio_seconds=record.audio_seconds,
    )


def _ledger_ids(record: UsageRecord, cache: dict) -> tuple[int | None, int | None]:
    """The key's and the user's ledger rows the record was billed in: the ids it kept, else
    (a record from before they were kept) the rows of the periods holding its time."""
    if record.key_ledger_id and record.user_ledger_id:
        return record.key_ledger_id, record.user_ledger_id
    found = []
    for scope, owner in (("api_key_id", record.api_key_id), ("user_id", record.user_id)):
        if owner is None:
            found.append(None)
            continue
        rows = cache.get((scope, owner))
        if rows is None:
            rows = cache[(scope, owner)] = list(
                QuotaLedger.objects.filter(**{scope: owner}).values_list(
                    "id", "period", "period_start"
                )
            )
        found.append(
            next(
                (
                    i
                    for i, period, start in rows
                    if period_start(period, record.created_at) == start
                ),
                None,
            )
        )
    return found[0], found[1]


def records_reprice(
    *,
    since: dt.datetime,
    until: dt.datetime | None = None,
    model: str | None = None,
    dry_run: bool = False,
    book: PriceBook | None = None,
) -> RepriceResult:
    """Re-price the finished records made in [since, until) (of `model`: the name asked
    for, answered with, or priced as). With `dry_run`, only say what would change."""
    if book is None:
        price_book_reset()  # the table as it is now, not as this process last read it
        book = price_book()
    records = UsageRecord.objects.completed().filter(created_at__gte=since).order_by("pk")
    if until is not None:
        records = records.filter(created_at__lt=until)
    result = RepriceResult()
    ledger_rows: dict = {}
    last = 0
    while True:
        ids = list(records.filter(pk__gt=last).values_list("pk", flat=True)[:_BATCH])
        if not ids:
            return result
        last = ids[-1]
        with transaction.atomic():
            # Read again under lock: a reaped record the relay completes meanwhile, or a
            # second reprice run, waits here and then sees this one's cost (or this one
            # sees theirs), so no difference is applied twice or computed from a stale cost.
            batch = list(
                UsageRecord.objects.completed()
                .select_for_update()
                .filter(pk__in=ids)
                .order_by("pk")
            )
            _reprice_batch(batch, book, model, dry_run, result, ledger_rows)


def _reprice_batch(
    batch: list[UsageRecord],
    book: PriceBook,
    model: str | None,
    dry_run: bool,
    result: RepriceResult,
    ledger_rows: dict,
) -> None:
    rollups: list[tuple[UsageRecord, int]] = []
    moves: list[LedgerMove] = []
    for record in batch:
        billed_as = record.response_model or record.model
        if model is not None and model not in (record.model, billed_as, book.resolve(billed_as)):
            continue
        result.examined += 1
        cost, price = book.bill(
            billed_as, _usage(record), tier=record.service_tier, at=record.created_at
        )
        price_id = price.id if price is not None else None
        if cost == record.cost_usd and price_id == record.price_id:
            continue
        change = result.by_model[book.resolve(billed_as) or billed_as]
        change.records += 1
        change.before += record.cost_usd or ZERO
        change.after += cost or ZERO
        change.became_unpriced += cost is None and record.cost_usd is not None
        change.became_priced += cost is not None and record.cost_usd is None
        result.changed += 1
        delta = (cost or ZERO) - (record.cost_usd or ZERO)
        if delta:
            key_ledger, user_ledger = _ledger_ids(record, ledger_rows)
            if key_ledger is not None and user_ledger is not None:
                # The team's row as the record kept it: a record from before teams (or of a
                # user in none) moved no team's budget, so repricing moves none either.
                team_ledger = record.team_ledger_id
                moves.append(LedgerMove(key_ledger, user_ledger, ZERO, 0, delta, 0, team_ledger))
                result.ledgers.update((key_ledger, user_ledger))
                if team_ledger is not None:
                    result.ledgers.add(team_ledger)
        if dry_run:
            continue
        rollups.append((copy.copy(record), -1))
        record.cost_usd, record.price_id = cost, price_id
        record.save(update_fields=["cost_usd", "price"])
        rollups.append((record, 1))
    if not dry_run:
        rollups_add(rollups)
        if moves:
            quota_settle(moves=moves)
