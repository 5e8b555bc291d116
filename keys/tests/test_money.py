"""Money as people and clients read it: two to six decimals, half to even, never `0E-12`."""

from __future__ import annotations

from decimal import Decimal

import pytest

from keys.money import usd, usd_json

PICO = Decimal("0.000000000001")


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal(0), "0.00"),
        (Decimal("0E-12"), "0.00"),
        (PICO, "0.00"),  # str() says 1E-12, Django's admin 0.000000000001
        (-PICO, "0.00"),  # never "-0.00"
        (Decimal("1.500000000000"), "1.50"),
        (Decimal(5), "5.00"),
        (Decimal("1E+2"), "100.00"),
        (Decimal("0.000123"), "0.000123"),
        (Decimal("0.00025"), "0.00025"),
        (Decimal("12.3456789"), "12.345679"),
        # Half to even, as the stored amounts round: 2 stays, 3 goes up to 4.
        (Decimal("0.0000125"), "0.000012"),
        (Decimal("0.0000135"), "0.000014"),
        (Decimal("0.0000005"), "0.00"),
        (Decimal("0.0000015"), "0.000002"),
        (Decimal("-0.25"), "-0.25"),
        (Decimal("9223372.036854775807"), "9223372.036855"),
    ],
    ids=str,
)
def test_an_amount_shows_two_to_six_decimals(amount, shown):
    assert usd(amount) == shown
    assert usd_json(amount) == shown


def test_no_amount_is_a_dash_as_text_and_null_in_json():
    assert usd(None) == "—"
    assert usd_json(None) is None


def test_dashboards_may_group_thousands():
    assert usd(Decimal("1234567.5"), thousands=True) == "1,234,567.50"
    assert usd(Decimal("1234567.5")) == "1234567.50"
