"""Query-string filters of /api/usage/ (and of its CSV export), as one django-filter FilterSet."""

from __future__ import annotations

import datetime as dt

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from keys.filters import StrictBooleanFilter, key_id_or_none
from keys.models import ApiKey
from usage.models import UsageRecord

# A day one short of the calendar's ends: a `to` day becomes the next midnight and an offset
# datetime becomes UTC, and neither may step past 9999-12-31 or before 0001-01-01 (Python
# raises OverflowError there, which was a 500).
FIRST_DAY = dt.date.min + dt.timedelta(days=1)
LAST_DAY = dt.date.max - dt.timedelta(days=1)


def calendar_day_or_none(value: dt.date | dt.datetime) -> dt.date | None:
    """The UTC day of a date or an aware datetime, or None when it lies at the calendar's ends
    (where the arithmetic the filters do on it would overflow)."""
    try:
        day = value.astimezone(dt.UTC).date() if isinstance(value, dt.datetime) else value
    except OverflowError:
        return None
    return day if FIRST_DAY <= day <= LAST_DAY else None


class DateOrDateTimeField(forms.Field):
    """An ISO 8601 date (`2025-01-31`) or datetime (`2025-01-31T12:00:00Z`); a datetime with
    no offset is taken as UTC."""

    default_error_messages = {"invalid": "Enter an ISO 8601 date or datetime."}

    def to_python(self, value: str | None) -> dt.date | dt.datetime | None:
        value = (value or "").strip()
        if not value:
            return None
        # An unencoded "+01:00" offset arrives as " 01:00" (a "+" in a query string is a space).
        if len(value) > 10 and value[-6] == " ":
            value = value[:-6] + "+" + value[-5:]
        try:
            # The date first: parse_datetime would read "2025-01-31" as its midnight.
            parsed: dt.date | dt.datetime | None = parse_date(value) or parse_datetime(value)
        except ValueError:
            parsed = None
        if parsed is None:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        if isinstance(parsed, dt.datetime) and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        if calendar_day_or_none(parsed) is None:
            raise forms.ValidationError(
                f"Enter a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}.",
                code="out_of_range",
            )
        # In UTC: Python takes offsets up to ±23:59, PostgreSQL only up to ±15:59.
        return parsed.astimezone(dt.UTC) if isinstance(parsed, dt.datetime) else parsed


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


class DateOrDateTimeFilter(django_filters.Filter):
    field_class = DateOrDateTimeField


class IntegerFilter(django_filters.NumberFilter):
    """A whole number in bounds: NumberFilter takes any decimal (`1e30`, `200.5`), and one past
    the column's range is a database error, not a 400."""

    field_class = forms.IntegerField


class UsageRecordFilter(django_filters.FilterSet):
    """Filters of the record list. Each one the dashboards use is backed by an index: user and
    key by (user, -created_at) and (api_key, -created_at), from/to by created_at."""

    user = django_filters.CharFilter(
        field_name="user__username", help_text="Username (staff only; others see their own)."
    )
    key = django_filters.CharFilter(method="filter_key", help_text="Key prefix or key id.")
    model = django_filters.CharFilter(
        method="filter_model", help_text="Model asked for or answered with."
    )
    endpoint = django_filters.CharFilter(help_text="For example `chat/completions`.")
    status = IntegerFilter(
        field_name="status_code",
        method="filter_status",
        min_value=0,
        max_value=999,
        help_text="HTTP status.",
    )
    stream = StrictBooleanFilter()
    estimated = StrictBooleanFilter(
        help_text="Tokens counted by the proxy because upstream reported none."
    )

    class Meta:
        model = UsageRecord
        fields: list[str] = []

    def filter_key(self, queryset: QuerySet[UsageRecord], name: str, value: str) -> QuerySet:
        if value.isdigit():
            key_id = key_id_or_none(value)
            return queryset.none() if key_id is None else queryset.filter(api_key_id=key_id)
        # Through the keys table, so the (api_key, -created_at) index does the work; a key
        # deleted since is found by the prefix the records kept.
        key_ids = list(ApiKey.objects.filter(prefix=value).values_list("pk", flat=True))
        if key_ids:
            return queryset.filter(api_key_id__in=key_ids)
        return queryset.filter(key_prefix=value)

    def filter_status(self, queryset: QuerySet[UsageRecord], name: str, value: int) -> QuerySet:
        records = queryset.filter(status_code=value)
        # An error also names the errors index's condition, which SQLite needs to use it.
        return records.filter(status_code__gte=400) if value >= 400 else records

    def filter_model(self, queryset: QuerySet[UsageRecord], name: str, value: str) -> QuerySet:
        return queryset.filter(Q(model=value) | Q(response_model=value))

    def filter_from(
        self, queryset: QuerySet[UsageRecord], name: str, value: dt.date | dt.datetime
    ) -> QuerySet:
        if not isinstance(value, dt.datetime):
            value = _midnight(value)
        return queryset.filter(created_at__gte=value)

    def filter_to(
        self, queryset: QuerySet[UsageRecord], name: str, value: dt.date | dt.datetime
    ) -> QuerySet:
        # Both ends are inclusive: a date `to` takes in that whole (UTC) day.
        if isinstance(value, dt.datetime):
            return queryset.filter(created_at__lte=value)
        return queryset.filter(created_at__lt=_midnight(value + dt.timedelta(days=1)))


# "from" is a Python keyword, so these two cannot be declared in the class body.
UsageRecordFilter.base_filters["from"] = DateOrDateTimeFilter(
    method="filter_from", help_text="Created at or after: an ISO date or datetime (UTC)."
)
UsageRecordFilter.base_filters["to"] = DateOrDateTimeFilter(
    method="filter_to",
    help_text="Created at or before: an ISO datetime, or a date for the whole of that day.",
)
