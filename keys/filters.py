"""Query-string filters of the key list, `GET /api/keys/`."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet
from django.utils import timezone

from keys.models import ApiKey

# The largest id a key can have (a bigint column on PostgreSQL, a 64-bit integer on SQLite).
BIGINT_MAX = 2**63 - 1


def key_id_or_none(value: str) -> int | None:
    """A key id given as digits, or None when it cannot be one: too big for the column (which
    the database answers with an error, not "no such key"), or not ASCII digits ("²" passes
    str.isdigit() but not int())."""
    if not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= BIGINT_MAX else None


class StrictBooleanFilter(django_filters.TypedChoiceFilter):
    """`true`/`false` (or 1/0). Anything else is a 400: django-filter's BooleanFilter would
    quietly drop the filter and answer with everything."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("choices", [(v, v) for v in ("true", "false", "1", "0")])
        kwargs.setdefault("coerce", lambda value: value in ("true", "1"))
        super().__init__(*args, **kwargs)


class ApiKeyFilter(django_filters.FilterSet):
    username = django_filters.CharFilter(field_name="user__username")
    active = StrictBooleanFilter(
        method="filter_active", help_text="true: neither revoked nor expired; false: either."
    )

    class Meta:
        model = ApiKey
        fields: list[str] = []

    def filter_active(self, queryset: QuerySet[ApiKey], name: str, value: bool) -> QuerySet:
        usable = Q(revoked_at__isnull=True) & (
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )
        return queryset.filter(usable if value else ~usable)
