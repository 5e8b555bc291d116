"""Template filters for the dashboards: money from Decimal, and spend that admits being unpriced."""

from __future__ import annotations

from decimal import Decimal

from django import template

from usage.charts import format_spend, format_usd
from usage.selectors import UsageTotals

register = template.Library()


@register.filter
def usd(value: Decimal | None) -> str:
    return format_usd(value)


@register.filter
def spend(totals: UsageTotals) -> str:
    return format_spend(totals)


@register.filter
def thousands(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


@register.filter
def compact(value: int) -> str:
    """1234567 → 1.2M, for the headline figures; tables show the exact count."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)
