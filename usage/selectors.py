"""Reads of prices and usage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.cache import cache
from django.db.models import F, Prefetch, Q, QuerySet, Sum

from keys.filters import BIGINT_MAX
from keys.models import (
    ApiKey,
    Limits,
    QuotaLedger,
    Team,
    TeamMember,
    UserLimit,
    period_end,
    period_start,
)
from usage.models import (
    LATENCY_BUCKETS_MS,
    PRICE_COLUMNS,
    ROLLUP_SUMS,
    ModelAlias,
    ModelPrice,
    ToolPrice,
    UsageDaily,
    UsageHourly,
    UsageLatency,
    UsageRecord,
)
from usage.pricing import Price, ToolFee, model_undated


def price_rows() -> list[Price]:
    return [
        Price(
            model=row.model,
            effective_from=row.effective_from,
            rates={c: getattr(row, c) for c in PRICE_COLUMNS},
            id=row.pk,
            source=row.source,
            max_input_tokens=row.max_input_tokens,
        )
        for row in ModelPrice.objects.all()
    ]


def price_aliases() -> dict[str, str]:
    return dict(ModelAlias.objects.values_list("alias", "model"))


def tool_fees() -> list[ToolFee]:
    return [
        ToolFee(
            tool=row.tool,
            patterns=tuple(p.strip() for p in row.model_patterns.split(",") if p.strip()) or ("*",),
            variant=row.variant,
            usd_per_call=row.usd_per_call,
            effective_from=row.effective_from,
        )
        for row in ToolPrice.objects.all()
    ]


# --- Dashboard reads (usage.views). Everything except the recent-records list comes from the
# UsageDaily rollup and the quota ledger, so a page costs the same at a thousand records as at
# a million; the recent list walks the (user, -created_at) index and stops after `limit`.


@dataclasses.dataclass
class UsageTotals:
    """Rollup rows summed under one label: a day (ISO date), a model or a username."""

    label: str = ""
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        for field in ROLLUP_SUMS:
            setattr(self, field, getattr(self, field) + (row[f"sum_{field}"] or 0))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass
class DashboardUsage:
    start: dt.date
    end: dt.date
    days: list[tuple[dt.date, UsageTotals]]  # every day of the range, empty ones included
    models: list[UsageTotals]  # most spend first
    spend_by_day_model: dict[tuple[dt.date, str], Decimal]
    total: UsageTotals


# A day's rollup rows stop changing once no request begun that day can still be running (a
# record is dated when its request started, and upstream reads time out within minutes), so
# the sums of days before yesterday are cached: a 90-day page then reads two days of rollup
# rows, not ninety. The expiry bounds how long a hand edit of an old record goes unseen.
CLOSED_DAYS_CACHE_SECONDS = 15 * 60


def _rollup_grouped(
    *, user_id: int | None, group: tuple[str, ...], start: dt.date, end: dt.date
) -> list[dict[str, Any]]:
    rows = UsageDaily.objects.filter(day__gte=start, day__lte=end)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    # Prefixed: an annotation may not reuse the name of a model field.
    sums = {f"sum_{field}": Sum(field) for field in ROLLUP_SUMS}
    return list(rows.values(*group).annotate(**sums).order_by())


def _rollup_sums(
    *, user_id: int | None, group: tuple[str, ...], start: dt.date, end: dt.date, today: dt.date
) -> list[dict[str, Any]]:
    """Rollup sums by `group` from `start` to `end`: the closed days' from the cache (or one
    query that fills it), the last two days' always from the database. The two parts cover
    different days, so a caller grouping by day gets no row twice; others must merge."""
    closed_end = min(end, today - dt.timedelta(days=2))
    rows: list[dict[str, Any]] = []
    if start <= closed_end:
        key = f"usage:dashboard:{user_id or 'all'}:{','.join(group)}:{start}:{closed_end}"
        closed = cache.get(key)
        if closed is None:
            closed = _rollup_grouped(user_id=user_id, group=group, start=start, end=closed_end)
            cache.set(key, closed, CLOSED_DAYS_CACHE_SECONDS)
        rows.extend(closed)
    open_start = max(start, closed_end + dt.timedelta(days=1))
    if open_start <= end:
        rows.extend(_rollup_grouped(user_id=user_id, group=group, start=open_start, end=end))
    return rows


def usage_dashboard(
    *, user_id: int | None, start: dt.date, end: dt.date, today: dt.date
) -> DashboardUsage:
    """One user's usage (everyone's when `user_id` is None) from `start` to `end` inclusive,
    by day, by model and by both, from the rollup grouped by day and model."""
    grouped = _rollup_sums(
        user_id=user_id, group=("day", "model"), start=start, end=end, today=today
    )
    return _dashboard_usage(grouped, start=start, end=end)


def _dashboard_usage(
    grouped: list[dict[str, Any]], *, start: dt.date, end: dt.date
) -> DashboardUsage:
    """Rollup sums with `day` and `model` (rows of one day and model may repeat, as when also
    grouped by user: they are added up) as a DashboardUsage."""
    span = (end - start).days + 1
    by_day = {start + dt.timedelta(days=n): UsageTotals() for n in range(span)}
    by_model: dict[str, UsageTotals] = {}
    spend: dict[tuple[dt.date, str], Decimal] = {}
    total = UsageTotals(label="total")
    folded = models_folded({row["model"] for row in grouped})
    for row in grouped:
        model = folded.get(row["model"], row["model"]) or "(no model)"
        by_day[row["day"]].add(row)
        by_model.setdefault(model, UsageTotals(label=model)).add(row)
        total.add(row)
        spend[row["day"], model] = spend.get((row["day"], model), Decimal(0)) + (
            row["sum_cost_usd"] or Decimal(0)
        )
    for day, totals in by_day.items():
        totals.label = day.isoformat()
    return DashboardUsage(
        start=start,
        end=end,
        days=list(by_day.items()),
        models=_most_spend_first(by_model.values()),
        spend_by_day_model=spend,
        total=total,
    )


def models_folded(names: Iterable[str]) -> dict[str, str]:
    """Which model names to show under another's row: a request is kept under the model
    OpenAI answered with (`gpt-4o-mini-2024-07-18`), and one refused before it reached OpenAI
    under the model asked for (`gpt-4o-mini`), so each model asked for by its alias would
    read as two rows. An undated name goes to its snapshot's row when exactly one snapshot
    of it is in the same report; with two (`gpt-4o-2024-08-06` and `-11-20`) which one the
    refused requests would have got is unknown, so it keeps its own row."""
    names = set(names)
    snapshots: dict[str, list[str]] = {}
    for name in names:
        undated = model_undated(name)
        if undated != name and undated in names:
            snapshots.setdefault(undated, []).append(name)
    return {alias: found[0] for alias, found in snapshots.items() if len(found) == 1}


def _most_spend_first(rows: Iterable[UsageTotals]) -> list[UsageTotals]:
    return sorted(rows, key=lambda t: (-t.cost_usd, -t.unpriced_requests, -t.requests, t.label))


def usage_by_user(*, start: dt.date, end: dt.date, today: dt.date) -> list[UsageTotals]:
    """Every user's totals from `start` to `end` inclusive, biggest spender first."""
    by_user: dict[str, UsageTotals] = {}
    for row in _rollup_sums(
        user_id=None, group=("user__username",), start=start, end=end, today=today
    ):
        name = row["user__username"]
        by_user.setdefault(name, UsageTotals(label=name)).add(row)
    return _most_spend_first(by_user.values())


def usage_by_key(
    *, user_id: int, start: dt.date, end: dt.date, today: dt.date
) -> list[UsageTotals]:
    """One user's totals per key from `start` to `end` inclusive, biggest spender first,
    each labelled as its key is (`sk-proxy-abc… (laptop)`)."""
    by_key: dict[int | None, UsageTotals] = {}
    for row in _rollup_sums(
        user_id=user_id, group=("api_key_id",), start=start, end=end, today=today
    ):
        by_key.setdefault(row["api_key_id"], UsageTotals()).add(row)
    names = {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=[k for k in by_key if k])}
    for key_id, totals in by_key.items():
        totals.label = names.get(key_id, "(deleted key)") if key_id else "(deleted key)"
    return _most_spend_first(by_key.values())


@dataclasses.dataclass
class ActivityBucket:
    """Requests, errors and latency of one hour or one UTC day."""

    start: dt.datetime
    requests: int = 0
    errors: int = 0
    p50_ms: int | None = None
    p95_ms: int | None = None
    cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    spend_by_model: dict[str, Decimal] = dataclasses.field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def totals(self) -> UsageTotals:
        return UsageTotals(
            label=self.start.isoformat(),
            requests=self.requests,
            errors=self.errors,
            cost_usd=self.cost_usd,
            unpriced_requests=self.unpriced_requests,
        )


def _percentile(histogram: Mapping[int, int], pct: int) -> int | None:
    """Nearest rank over the latency buckets: the upper edge of the bucket holding the
    smallest value at least `pct`% of the requests are at or below (LATENCY_BUCKETS_MS: at
    most one step above the true value; the last, open bucket shows as its lower edge)."""
    total = sum(n for bucket, n in histogram.items() if bucket >= 0)
    if total <= 0:
        return None
    rank, seen = max(1, math.ceil(pct / 100 * total)), 0
    for bucket in sorted(b for b in histogram if b >= 0):
        seen += histogram[bucket]
        if seen >= rank:
            return LATENCY_BUCKETS_MS[min(bucket, len(LATENCY_BUCKETS_MS) - 2)]
    return None


def _days_activity(
    *, user_id: int | None, days: list[dt.date]
) -> dict[dt.date, tuple[ActivityBucket, list]]:
    """Each day's bucket and its 24 hours' (all of them, empty ones too), from the hourly
    rollup and latency histogram (UsageHourly, UsageLatency): never from the records. Two
    queries for all the days, summed in the database by hour (everyone's 90 days are two
    million rollup rows, a few thousand once summed)."""
    if not days:
        return {}
    since = dt.datetime.combine(min(days), dt.time.min, tzinfo=dt.UTC)
    until = dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    found: dict[dt.date, tuple[ActivityBucket, list]] = {}
    for day in days:
        start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        hours = [ActivityBucket(start=start + dt.timedelta(hours=hour)) for hour in range(24)]
        found[day] = (ActivityBucket(start=start), hours)
    totals = UsageHourly.objects.filter(hour__gte=since, hour__lt=until)
    latencies = UsageLatency.objects.filter(hour__gte=since, hour__lt=until)
    if user_id is not None:
        totals, latencies = totals.filter(user_id=user_id), latencies.filter(user_id=user_id)
    summed = (
        totals.values_list("hour", "model")
        .annotate(Sum("requests"), Sum("errors"), Sum("cost_usd"), Sum("unpriced_requests"))
        .order_by()
    )
    for hour, model, requests, errors, cost, unpriced in summed:
        at = hour.astimezone(dt.UTC)
        if at.date() not in found:
            continue  # a day between two asked for, read from the cache
        daily, hours = found[at.date()]
        for bucket in (hours[at.hour], daily):
            bucket.requests += requests
            bucket.errors += errors
            bucket.unpriced_requests += unpriced
            if cost:
                bucket.cost_usd += cost
                bucket.spend_by_model[model] = bucket.spend_by_model.get(model, Decimal(0)) + cost
    histograms: dict[dt.date, list[dict[int, int]]] = {day: [{} for _ in range(25)] for day in days}
    by_bucket = latencies.values_list("hour", "bucket").annotate(Sum("requests")).order_by()
    for hour, bucket, requests in by_bucket:
        at = hour.astimezone(dt.UTC)
        if at.date() not in histograms:
            continue
        # 24 hours, then the whole day.
        for histogram in (histograms[at.date()][at.hour], histograms[at.date()][24]):
            histogram[bucket] = histogram.get(bucket, 0) + requests
    for day, (daily, hours) in found.items():
        for activity, histogram in zip((*hours, daily), histograms[day], strict=True):
            activity.p50_ms = _percentile(histogram, 50)
            activity.p95_ms = _percentile(histogram, 95)
    return found


def usage_activity(
    *, user_id: int | None, start: dt.date, end: dt.date, today: dt.date, hourly: bool
) -> list[ActivityBucket]:
    """Requests, errors, spend and latency (p50, p95 of `latency_ms`, to the resolution of
    LATENCY_BUCKETS_MS) per UTC day, or per hour when `hourly`, from `start` to `end`
    inclusive, empty buckets included; each bucket's spend by model, under the names the
    by-model table uses.

    Read from the hourly rollups (a day is at most 24 × users × models rows); closed days, as
    on the rest of the dashboard, from the cache once read."""
    closed_end = today - dt.timedelta(days=2)
    days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    scope = user_id or "all"
    keys = {day: f"usage:activity:{scope}:{day}" for day in days if day <= closed_end}
    cached = cache.get_many(list(keys.values()))
    missing = [day for day in days if day not in keys or keys[day] not in cached]
    read = _days_activity(user_id=user_id, days=missing)
    cache.set_many(
        {keys[day]: read[day] for day in missing if day in keys}, CLOSED_DAYS_CACHE_SECONDS
    )
    buckets: list[ActivityBucket] = []
    for day in days:
        daily, hours = read[day] if day in read else cached[keys[day]]
        buckets.extend(hours if hourly else [daily])
    folded = models_folded({model for b in buckets for model in b.spend_by_model})
    for bucket in buckets:
        if any(model in folded for model in bucket.spend_by_model):
            spend: dict[str, Decimal] = {}
            for model, amount in bucket.spend_by_model.items():
                name = folded.get(model, model)
                spend[name] = spend.get(name, Decimal(0)) + amount
            bucket.spend_by_model = spend
    return buckets


# The status choices of the request log and the admin's status filter: (label, low, high).
STATUS_RANGES = {
    "2xx": ("Success (2xx)", 200, 299),
    "4xx": ("Client error (4xx)", 400, 499),
    "429": ("Quota or rate limit (429)", 429, 429),
    "5xx": ("Upstream error (5xx)", 500, 599),
    "errors": ("Any error (4xx, 5xx)", 400, 599),
}
# Fixed choices: listing the distinct values would read every record.
RECORD_ENDPOINTS = (
    "chat/completions",
    "completions",
    "responses",
    "embeddings",
    "moderations",
    "models",
)


def records_with_status(records: QuerySet[UsageRecord], status: str) -> QuerySet[UsageRecord]:
    """The records in one of STATUS_RANGES (others: all). An error range also names the
    errors index's own condition, status >= 400: SQLite uses a partial index only for a query
    that repeats its WHERE term (PostgreSQL infers it from 500–599 alone)."""
    if status not in STATUS_RANGES:
        return records
    _, low, high = STATUS_RANGES[status]
    records = records.filter(status_code__gte=low, status_code__lte=high)
    return records.filter(status_code__gte=400) if low >= 400 else records


def records_of_key_prefix(records: QuerySet[UsageRecord], prefix: str) -> QuerySet[UsageRecord]:
    """The records of the keys whose prefix starts with `prefix`. Through the keys table, so
    the (api_key, -created_at) index reads one key's records newest first; a LIKE on the
    records' own column would read every record. A key deleted before records protected it is
    found by the prefix its records kept."""
    key_ids = list(ApiKey.objects.filter(prefix__startswith=prefix).values_list("pk", flat=True))
    if key_ids:
        return records.filter(api_key_id__in=key_ids)
    return records.filter(key_prefix__startswith=prefix)


def records_searched(records: QuerySet[UsageRecord], term: str) -> QuerySet[UsageRecord]:
    """The records a search box's `term` names: a key (by the start of its prefix), a user (by
    exact username), a model (a name containing the term, or the exact name asked for) or an
    upstream request id (exact). Each kind is looked up first where it is cheap (the keys,
    users and daily rollup tables, an index for the rest), and only the kinds that match go
    into the records' query: one OR over every column of ten million records reads them all,
    a filter on one kind is an index scan. A term that names nothing finds nothing at once."""
    term = term.strip()
    if not term:
        return records
    if "\x00" in term:
        return records.none()  # no record holds one; PostgreSQL refuses it in a query
    user_model = get_user_model()
    named: list[Q] = []
    key_ids = list(ApiKey.objects.filter(prefix__startswith=term).values_list("pk", flat=True))
    if key_ids:
        named.append(Q(api_key_id__in=key_ids))
    elif term.startswith("sk-") and UsageRecord.objects.filter(key_prefix=term).exists():
        named.append(Q(key_prefix=term))  # a deleted key's records
    user_ids = list(
        user_model.objects.filter(**{user_model.USERNAME_FIELD: term}).values_list("pk", flat=True)
    )
    if user_ids:
        named.append(Q(user_id__in=user_ids))
    # A rollup row's model is the one answered, or the one asked for when none was.
    models = set(
        UsageDaily.objects.filter(model__icontains=term).values_list("model", flat=True).distinct()
    )
    if UsageRecord.objects.filter(model=term).exists():
        models.add(term)  # an alias asked for (the rollup keeps the model answered)
    if models:
        named.append(Q(model__in=sorted(models)) | Q(response_model__in=sorted(models)))
    # Stating the index's condition (not blank) lets SQLite use the partial index.
    with_id = ~Q(upstream_request_id="") & Q(upstream_request_id=term)
    if UsageRecord.objects.filter(with_id).exists():
        named.append(with_id)
    if not named:
        return records.none()
    found = named[0]
    for other in named[1:]:
        found |= other
    return records.filter(found)


@dataclasses.dataclass(frozen=True)
class RequestLogPage:
    records: list[UsageRecord]
    page: int
    has_next: bool


def usage_request_log(
    *,
    user_id: int | None,
    start: dt.date,
    end: dt.date,
    model: str = "",
    endpoint: str = "",
    status: str = "",
    key_prefix: str = "",
    page: int = 1,
    per_page: int = 50,
    user_ids: list[int] | None = None,
) -> RequestLogPage:
    """One page of the records in the range, newest first, without their bodies, of one user
    or (`user_ids`) of several: a team's members. `model`
    matches the model asked for or the one answered; `key_prefix` the start of a key's
    prefix. Whether a next page exists is learnt by reading one record more, never by
    counting a million."""
    since = dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    records = UsageRecord.objects.completed().filter(created_at__gte=since, created_at__lt=until)
    if user_id is not None:
        records = records.filter(user_id=user_id)
    if user_ids is not None:
        records = records.filter(user_id__in=user_ids)
    if model:
        records = records.filter(Q(model=model) | Q(response_model=model))
    if endpoint:
        records = records.filter(endpoint=endpoint)
    records = records_with_status(records, status)
    if key_prefix:
        records = records_of_key_prefix(records, key_prefix)
    offset = (page - 1) * per_page
    found = list(
        # The users by a second query, not a JOIN: joined, SQLite loops over the users first
        # and sorts each one's records (a model filter at 1M records: 0.9 s).
        records.only(*RECENT_RECORD_FIELDS)
        .prefetch_related(Prefetch("user", queryset=get_user_model().objects.only("username")))
        .order_by("-created_at", "-id")[offset : offset + per_page + 1]
    )
    return RequestLogPage(records=found[:per_page], page=page, has_next=len(found) > per_page)


RECENT_RECORD_FIELDS = (
    "id",
    "created_at",
    "user",
    "key_prefix",
    "endpoint",
    "model",
    "response_model",
    "status_code",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "estimated",
    "error_code",
)


def usage_record_for_viewer(*, record_id: int, viewer: AbstractBaseUser) -> UsageRecord | None:
    """A record its viewer may open: their own, a member's of a team they are admin of, or
    anyone's for staff."""
    if record_id > BIGINT_MAX:  # no such row, and the database would raise on the number
        return None
    records = UsageRecord.objects.completed().select_related("user", "api_key")
    if not getattr(viewer, "is_staff", False):
        records = records.filter(
            Q(user_id=viewer.pk) | Q(user_id__in=_members_of_teams_run_by(viewer))
        )
    return records.filter(pk=record_id).first()


@dataclasses.dataclass(frozen=True)
class BudgetLine:
    """One key's (or the user's own) limits against this period's ledger row."""

    label: str
    status: str
    period: str
    period_start: dt.datetime
    period_end: dt.datetime | None
    budget_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal
    token_limit: int | None
    tokens: int
    request_limit: int | None
    requests: int
    prefix: str = ""  # the key's; empty on the user's own line

    @property
    def remaining_usd(self) -> Decimal | None:
        if self.budget_usd is None:
            return None
        return self.budget_usd - self.spent_usd - self.reserved_usd

    @property
    def used_percent(self) -> int:
        if not self.budget_usd:
            return 100 if self.budget_usd is not None else 0
        used = (self.spent_usd + self.reserved_usd) / self.budget_usd * 100
        return max(0, min(100, int(used)))


def _budget_line(
    *,
    label: str,
    status: str,
    limits: Limits,
    ledger: QuotaLedger | None,
    start: dt.datetime,
    prefix: str = "",
) -> BudgetLine:
    return BudgetLine(
        prefix=prefix,
        label=label,
        status=status,
        period=limits.period,
        period_start=start,
        period_end=period_end(limits.period, start),
        budget_usd=limits.budget_usd,
        spent_usd=ledger.spent_usd if ledger else Decimal(0),
        reserved_usd=ledger.reserved_usd if ledger else Decimal(0),
        token_limit=limits.token_limit,
        tokens=ledger.tokens if ledger else 0,
        request_limit=limits.request_limit,
        requests=ledger.requests if ledger else 0,
    )


def budget_lines(
    *, user: AbstractBaseUser, now: dt.datetime
) -> tuple[BudgetLine | None, list[BudgetLine]]:
    """The user's own limit (None when it has none) and each key's, for the period holding
    `now`. A period with no ledger row yet has spent nothing."""
    keys = list(
        ApiKey.objects.filter(user=user).order_by(
            F("revoked_at").asc(nulls_first=True), "-created_at"
        )
    )
    starts = {key.pk: period_start(key.period, now) for key in keys}
    ledgers = {
        (row.api_key_id, row.period, row.period_start): row
        for row in QuotaLedger.objects.filter(
            api_key_id__in=starts, period_start__in=set(starts.values())
        )
    }
    key_lines = [
        _budget_line(
            label=str(key),
            prefix=key.prefix,
            status=key.status,
            limits=key,
            ledger=ledgers.get((key.pk, key.period, starts[key.pk])),
            start=starts[key.pk],
        )
        for key in keys
    ]
    user_limit = UserLimit.objects.filter(user=user).first()
    if user_limit is None:
        return None, key_lines
    start = period_start(user_limit.period, now)
    ledger = QuotaLedger.objects.filter(
        user=user, period=user_limit.period, period_start=start
    ).first()
    user_line = _budget_line(
        label="all your keys together",
        status="active",
        limits=user_limit,
        ledger=ledger,
        start=start,
    )
    return user_line, key_lines


# --- Team reads (usage.team_views): what a team's admins and staff see of a team. Figures come
# from the members' UsageDaily rows and the team's ledger row; only the request log reads
# records, one page of them.


def _members_of_teams_run_by(viewer: AbstractBaseUser) -> QuerySet[TeamMember]:
    """The user ids of the members of the team `viewer` is an admin of (none if they are not
    one), as a subquery."""
    teams = TeamMember.objects.filter(user_id=viewer.pk, is_admin=True).values("team_id")
    return TeamMember.objects.filter(team_id__in=teams).values("user_id")


def team_membership(*, user: AbstractBaseUser) -> TeamMember | None:
    """The user's place in a team, with the team, or None when they are in none."""
    return TeamMember.objects.select_related("team").filter(user_id=user.pk).first()


def team_for_viewer(*, team_id: int, viewer: AbstractBaseUser) -> Team | None:
    """The team, if `viewer` may see its usage: staff, or one of its team admins. None alike
    for a team that does not exist and one the viewer may not see."""
    if team_id > BIGINT_MAX:
        return None
    teams = Team.objects.filter(pk=team_id)
    if not getattr(viewer, "is_staff", False):
        teams = teams.filter(members__user_id=viewer.pk, members__is_admin=True)
    return teams.first()


def team_member_for_viewer(*, username: str, viewer: AbstractBaseUser) -> AbstractBaseUser | None:
    """The user named `username` if they are in a team `viewer` is an admin of, else None."""
    user_model = get_user_model()
    return (
        user_model.objects.filter(**{user_model.USERNAME_FIELD: username})
        .filter(pk__in=_members_of_teams_run_by(viewer))
        .first()
    )


def teams_listed() -> list[Team]:
    """Every team by name, for the links on the staff dashboard."""
    return list(Team.objects.only("id", "name").order_by("name"))


def team_budget_line(*, team: Team, now: dt.datetime) -> BudgetLine:
    """The team's limits against its ledger row for the period holding `now`: what all its
    members have spent and hold reserved together (every request a member makes while in
    the team, whoever was in it then)."""
    start = period_start(team.period, now)
    ledger = QuotaLedger.objects.filter(team=team, period=team.period, period_start=start).first()
    return _budget_line(label=team.name, status="active", limits=team, ledger=ledger, start=start)


@dataclasses.dataclass
class TeamUsage:
    """A team's current members and what each of them used in a range, with their usage
    added up as one dashboard's."""

    usage: DashboardUsage
    members: list[UsageTotals]  # every current member, those with no usage too; most spend first
    admins: set[str]  # the usernames of the team's admins
    member_ids: list[int]


def team_usage(*, team: Team, start: dt.date, end: dt.date) -> TeamUsage:
    """The usage of the team's current members from `start` to `end` inclusive: by day, by
    model and by member, from one query of the rollup grouped by day, model and user (the
    members' rollup rows only, through the (user, day) index).

    Not cached as a user's closed days are: who is in the team changes, and a cached sum
    would go on counting a member who left."""
    members = list(
        TeamMember.objects.filter(team=team)
        .values_list("user_id", "user__username", "is_admin")
        .order_by("user__username")
    )
    member_ids = [user_id for user_id, _, _ in members]
    sums = {f"sum_{field}": Sum(field) for field in ROLLUP_SUMS}
    grouped = list(
        UsageDaily.objects.filter(user_id__in=member_ids, day__gte=start, day__lte=end)
        .values("day", "model", "user_id")
        .annotate(**sums)
        .order_by()
    )
    by_member = {user_id: UsageTotals(label=name) for user_id, name, _ in members}
    for row in grouped:
        # A member who left between the two reads is still in the sums, not in the table.
        if (totals := by_member.get(row["user_id"])) is not None:
            totals.add(row)
    return TeamUsage(
        usage=_dashboard_usage(grouped, start=start, end=end),
        members=_most_spend_first(by_member.values()),
        admins={name for _, name, is_admin in members if is_admin},
        member_ids=member_ids,
    )


# --- API reads (usage.apis, usage.admin): the records a viewer may read, and summaries of the
# UsageDaily rollup as plain dicts of ints and Decimals, so /api/usage/summary/ costs the same
# at a million records as at a thousand.

SUMMARY_GROUPS = ("day", "model", "user", "key")
# The rollup columns each group is summed by. Names are looked up afterwards, for the few
# groups found, rather than joined onto every rollup row. A key belongs to one user, so
# grouping by the user too splits nothing; it keeps the owner's name on rows whose key was
# deleted since (api_key set to NULL).
_GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "day": ("day",),
    "model": ("model",),
    "user": ("user_id",),
    "key": ("api_key_id", "user_id"),
}


def _as_day(value: dt.date | None) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date()
    return value


def usage_daily_rows(
    *,
    user_id: int | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> QuerySet[UsageDaily]:
    """Rollup rows of one user, key and model (any when None), `start` to `end` inclusive.
    `model` is the model a rollup is kept under: the one OpenAI answered with, else the one
    asked for."""
    rows = UsageDaily.objects.all()
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    if model:
        rows = rows.filter(model=model)
    if start is not None:
        rows = rows.filter(day__gte=_as_day(start))
    if end is not None:
        rows = rows.filter(day__lte=_as_day(end))
    return rows


def _summed(row: Mapping[str, Any]) -> dict[str, Any]:
    sums: dict[str, Any] = {f: row[f"sum_{f}"] or 0 for f in ROLLUP_SUMS}
    # SQLite hands NUMERIC sums back as floats made Decimal; twelve places is what is stored.
    sums["cost_usd"] = Decimal(sums["cost_usd"]).quantize(Decimal("1E-12"))
    return sums


def usage_summary(
    *,
    user_id: int | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    group_by: str,
) -> list[dict[str, Any]]:
    """Requests, tokens, cost, errors and unpriced requests by day (oldest first), model, user
    or key (most spend first), from the rollup. Each row is the group's columns (`day`;
    `model`; `user`, `user_id`; `key` (prefix), `key_id`, `key_name`, `username`) followed by
    the ROLLUP_SUMS; `cost_usd` is a Decimal. Days with no usage are left out."""
    if group_by not in _GROUP_COLUMNS:
        raise ValueError(f"group_by must be one of {SUMMARY_GROUPS}, not {group_by!r}")
    columns = _GROUP_COLUMNS[group_by]
    rows = usage_daily_rows(
        user_id=user_id, api_key_id=api_key_id, model=model, start=start, end=end
    )
    grouped = list(
        rows.values(*columns).annotate(**{f"sum_{f}": Sum(f) for f in ROLLUP_SUMS}).order_by()
    )
    if group_by == "day":
        result = [{"day": row["day"], **_summed(row)} for row in grouped]
        result.sort(key=lambda r: r["day"])
        return result
    if group_by == "model":
        result = [{"model": row["model"], **_summed(row)} for row in grouped]
    else:
        usernames = dict(
            get_user_model()
            .objects.filter(pk__in={row["user_id"] for row in grouped})
            .values_list("pk", "username")
        )
        if group_by == "user":
            result = [
                {"user": usernames.get(row["user_id"]), "user_id": row["user_id"], **_summed(row)}
                for row in grouped
            ]
        else:
            keys = {
                pk: (prefix, name)
                for pk, prefix, name in ApiKey.objects.filter(
                    pk__in={row["api_key_id"] for row in grouped if row["api_key_id"]}
                ).values_list("pk", "prefix", "name")
            }
            result = [
                {
                    "key": keys.get(row["api_key_id"], (None, None))[0],
                    "key_id": row["api_key_id"],
                    "key_name": keys.get(row["api_key_id"], (None, None))[1],
                    "username": usernames.get(row["user_id"]),
                    **_summed(row),
                }
                for row in grouped
            ]
    label = next(iter(result[0])) if result else ""
    result.sort(key=lambda r: (-r["cost_usd"], -r["requests"], str(r[label] or "")))
    return result


def usage_totals(
    *,
    user_id: int | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> dict[str, Any]:
    """The ROLLUP_SUMS over the same rows as `usage_summary`, in one dict."""
    rows = usage_daily_rows(
        user_id=user_id, api_key_id=api_key_id, model=model, start=start, end=end
    )
    return _summed(rows.aggregate(**{f"sum_{f}": Sum(f) for f in ROLLUP_SUMS}))


def usage_records_for(user: AbstractBaseUser | None) -> QuerySet[UsageRecord]:
    """The records `user` may read (everyone's when None), newest first, bodies deferred.
    Whether a viewer is shown everyone's is the caller's call: staff logged in with a
    password are, a proxy key never is."""
    records = (
        UsageRecord.objects.completed()
        .select_related("user")
        .defer("request_body", "response_body")
        .order_by("-created_at", "-id")
    )
    if user is not None:
        records = records.filter(user_id=user.pk)
    return records


def usage_record_get(*, record_id: int, user: AbstractBaseUser | None) -> UsageRecord | None:
    """One record with its bodies, if `user` may read it (any record when None)."""
    if record_id > BIGINT_MAX:  # no such row, and the database would raise on the number
        return None
    records = UsageRecord.objects.completed().select_related("user")
    if user is not None:
        records = records.filter(user_id=user.pk)
    return records.filter(pk=record_id).first()


def usage_records_after(
    records: QuerySet[UsageRecord], *, after: tuple[dt.datetime, int] | None, limit: int
) -> list[UsageRecord]:
    """The next `limit` of `records`, newest first, after the one at (created_at, id) `after`.
    Keyset paging: an export of a million records never asks the database for an OFFSET."""
    if after is not None:
        created_at, pk = after
        records = records.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk))
    return list(records.order_by("-created_at", "-id")[:limit])


def usage_record_count(*, user_id: int | None = None) -> int:
    """How many records there are (of one user), without counting a million rows: the oldest
    kept day is counted (one index range), every later day is read from the rollup. Exact
    while every record goes through usage_record_create and retention (prune_usage) deletes
    by age only, since then only the oldest day can be partly gone."""
    records = UsageRecord.objects.completed()
    if user_id is not None:
        records = records.filter(user_id=user_id)
    oldest = records.order_by("created_at").values_list("created_at", flat=True).first()
    if oldest is None:
        return 0
    first_day = oldest.astimezone(dt.UTC).date()
    next_day = dt.datetime.combine(first_day + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    on_first_day = records.filter(created_at__lt=next_day).count()
    later = usage_daily_rows(user_id=user_id, start=first_day + dt.timedelta(days=1))
    return on_first_day + (later.aggregate(n=Sum("requests"))["n"] or 0)


def usage_days(*, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
    """The UTC days with any usage, `start` inclusive to `end` exclusive, oldest first: read
    from the rollup's day index, where a DISTINCT over the records would read every record."""
    days = UsageDaily.objects.all()
    if start is not None:
        days = days.filter(day__gte=start)
    if end is not None:
        days = days.filter(day__lt=end)
    return list(days.order_by("day").values_list("day", flat=True).distinct())
