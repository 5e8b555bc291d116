"""Reads of prices and usage."""

from __future__ import annotations

from usage.models import PRICE_COLUMNS, ModelPrice
from usage.pricing import Price


def price_rows() -> list[Price]:
    return [
        Price(
            model=row.model,
            effective_from=row.effective_from,
            rates={c: getattr(row, c) for c in PRICE_COLUMNS},
        )
        for row in ModelPrice.objects.all()
    ]
