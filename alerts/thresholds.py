"""Which budget thresholds a move of a ledger's spend reaches: pure Decimal arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

_HUNDRED = Decimal(100)


def reached(*, threshold: int, budget: Decimal, spent: Decimal) -> bool:
    """Whether `spent` is at least `threshold` percent of `budget`. Multiplied out, never
    divided: spent / budget would round, and $0.50 of $1 must be exactly 50%."""
    return spent * _HUNDRED >= budget * threshold


def thresholds_crossed(
    *,
    thresholds: Iterable[int],
    budget: Decimal | None,
    before: Decimal,
    after: Decimal,
    catch_up: bool = False,
) -> list[int]:
    """The thresholds the spend reached in moving from `before` to `after`, in order; several
    at once when one request spends that much. With `catch_up`, every threshold `after` has
    reached (the budget changed, or the process first sees this owner: the alert may be
    owed already; the insert of one already made is a no-op). No budget (None) or a zero
    budget has no thresholds: nothing can be spent."""
    if budget is None or budget <= 0 or (after <= before and not catch_up):
        return []
    return [
        t
        for t in sorted(thresholds)
        if reached(threshold=t, budget=budget, spent=after)
        and (catch_up or not reached(threshold=t, budget=budget, spent=before))
    ]
