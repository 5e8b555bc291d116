"""Money as it is shown: at most six decimals, at least two, never in exponent notation.

Amounts are stored to 10⁻¹² (keys.fields.MoneyField) and every sum is made on those exact
Decimals; only the text a person or a client reads is rounded, once, here. Micro-dollars are
the finest step shown: a short request to a cheap model costs a few of them (100 tokens at
$0.15 per million is $0.000015), and the places past them only matter to sums. So "0.00",
"1.50", "0.000123", "12.345679" — and an amount of 10⁻¹² is "0.00", never `0E-12` or
"0.000000000001".

Rounding is half to even, as the stored amounts are (keys.fields.quantized), so a figure
reads the same whichever database summed it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

SHOWN_PLACES = 6
MICRO_USD = Decimal(1).scaleb(-SHOWN_PLACES)
CENT = Decimal("0.01")
# Room for any MoneyField (22 digits) or API input at six places: quantize() raises
# InvalidOperation instead of rounding when the result has more digits than the precision.
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)


def _shown(value: Decimal | int) -> Decimal:
    """`value` rounded to micro-dollars, half to even, with trailing zeros dropped down to
    cents: the Decimal that `usd` writes out. Zero is never negative."""
    rounded = Decimal(value).quantize(MICRO_USD, context=_CONTEXT)
    if not rounded:
        return Decimal("0.00")
    shortest = rounded.normalize(_CONTEXT)
    return shortest if shortest.as_tuple().exponent < -2 else rounded.quantize(CENT)


def usd(value: Decimal | int | None, *, thousands: bool = False) -> str:
    """Dollars as text for people: admin, dashboards, CSV, messages, logs. No currency sign
    (callers add "$" where it reads better); `thousands` groups digits ("1,234.50") for
    dashboards. None, a missing amount, is an em dash."""
    if value is None:
        return "—"
    return format(_shown(value), ",f" if thousands else "f")


def usd_json(value: Decimal | int | None) -> str | None:
    """Dollars in a JSON body: the decimal string `usd` writes (a string, so no client parses
    money into a float), and null stays null."""
    return None if value is None else usd(value)
