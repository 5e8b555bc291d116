"""MoneyField: US dollars, exact to 10⁻¹² on every database.

A cost is tokens × a price with six decimals per million tokens, so it has at most twelve
decimal places. PostgreSQL keeps that exactly in NUMERIC(22, 12). SQLite has no decimal type:
Django's DecimalField lands in a NUMERIC-affinity column that SQLite stores as a REAL (15
significant digits), and `reserved_usd + ?` in SQL is float arithmetic. So on SQLite this field
stores an INTEGER count of 10⁻¹² dollars (picodollars): SQL arithmetic and SUM() on it are
exact integer arithmetic, up to $9,223,372 in one value. A value past that is refused, and so
is a ledger update whose sum would pass it (SQLite's arithmetic would quietly turn it into a
REAL; keys.services checks the type it returns). Python always sees a Decimal.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django.db import models

PLACES = 12
QUANTUM = Decimal(1).scaleb(-PLACES)


def quantized(value: Decimal | int | str) -> Decimal:
    """Dollars rounded to the 10⁻¹² the columns keep, half to even on every database."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def to_units(value: Decimal | int | str) -> int:
    """Dollars as an integer count of 10⁻¹² dollars (the SQLite storage form)."""
    return int(quantized(value).scaleb(PLACES))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-PLACES).quantize(QUANTUM)


class MoneyField(models.DecimalField):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 22)
        kwargs.setdefault("decimal_places", PLACES)
        super().__init__(*args, **kwargs)

    def get_internal_type(self) -> str:
        # Not "DecimalField": SQLite's backend would run its float converter on the integers.
        return "MoneyField"

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "sqlite":
            return "integer"
        return connection.data_types["DecimalField"] % {
            "max_digits": self.max_digits,
            "decimal_places": self.decimal_places,
        }

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if value is None or hasattr(value, "as_sql"):
            return value
        if not prepared:
            value = self.get_prep_value(value)
        if connection.vendor == "sqlite":
            return to_units(value)
        # Rounded here, half to even as on SQLite: NUMERIC would round half away from zero.
        return connection.ops.adapt_decimalfield_value(
            quantized(value), self.max_digits, self.decimal_places
        )

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Decimal | None:
        if value is None:
            return None
        if connection.vendor == "sqlite":
            if isinstance(value, int):
                return from_units(value)
            # COALESCE(SUM(...), '0') and the like: a literal that never became units.
            return Decimal(str(value)).quantize(QUANTUM)
        return value if isinstance(value, Decimal) else Decimal(str(value))


def money_param(value: Decimal, connection: Any) -> Any:
    """A dollar amount as a raw-SQL parameter compared with or added to a MoneyField column."""
    return to_units(value) if connection.vendor == "sqlite" else quantized(value)


class MoneyOverflow(OverflowError):
    """SQLite: a sum past what a 64-bit integer of picodollars holds ($9,223,372.036854775807).
    SQLite would silently make it a REAL there, so the write is refused instead."""


def sqlite_convert_columns(schema_editor: Any, table: str, columns: list[str], *, to: str) -> None:
    """Migrations: rewrite SQLite money columns between dollars as Django's DecimalField left
    them (REAL, read back with 15 significant digits as Django did) and integer picodollars
    (`to="units"`), or back (`to="dollars"`). PostgreSQL keeps NUMERIC and needs nothing."""
    if schema_editor.connection.vendor != "sqlite":
        return
    import decimal

    as_django_read = decimal.Context(prec=15).create_decimal_from_float
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        for column in columns:
            cursor.execute(
                f"SELECT id, {quote(column)} FROM {quote(table)} WHERE {quote(column)} IS NOT NULL"  # noqa: S608
            )
            rows = cursor.fetchall()
            updates = []
            for row_id, value in rows:
                if to == "units":
                    dollars = (
                        as_django_read(value) if isinstance(value, float) else Decimal(str(value))
                    )
                    updates.append((to_units(dollars), row_id))
                else:
                    updates.append((str(from_units(int(value))), row_id))
            cursor.executemany(
                f"UPDATE {quote(table)} SET {quote(column)} = %s WHERE id = %s",  # noqa: S608
                updates,
            )
