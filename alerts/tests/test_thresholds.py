"""Which thresholds a move of a ledger's spend reaches, and the alert rows it makes."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerts.thresholds import thresholds_crossed

D = Decimal
DEFAULT = (50, 80, 100)


def crossed(budget: str | None, before: str, after: str, **kwargs: object) -> list[int]:
    return thresholds_crossed(
        thresholds=DEFAULT,
        budget=None if budget is None else D(budget),
        before=D(before),
        after=D(after),
        **kwargs,
    )


def test_exactly_half_of_the_budget_reaches_50_percent():
    # Multiplied out, never divided: $0.50 of $1 is exactly 50%, and 12-place amounts too.
    assert crossed("1", "0.49", "0.50") == [50]
    assert crossed("1", "0.49", "0.499999999999") == []
    assert crossed("0.000027", "0", "0.0000135") == [50]


def test_one_move_crosses_several_thresholds_and_each_is_named():
    assert crossed("10", "4.99", "10.00") == [50, 80, 100]
    assert crossed("10", "5.00", "9.999999999999") == [80]


def test_a_threshold_reached_before_the_move_is_not_crossed_again():
    assert crossed("10", "5", "6") == []
    assert crossed("10", "8", "12") == [100]


def test_no_budget_or_a_zero_budget_has_no_thresholds():
    assert crossed(None, "0", "1000") == []
    assert crossed("0", "0", "1") == []


def test_a_spend_that_did_not_grow_crosses_nothing():
    # A reaped estimate replaced by a cheaper real record moves the spend down.
    assert crossed("10", "9", "4") == []
    assert crossed("10", "5", "5") == []


def test_a_budget_lowered_mid_period_owes_the_thresholds_already_passed():
    # $3 of a $10 budget was 30%; the budget is now $5, so the next move (to $3.10, 62%)
    # crosses nothing by itself, but 50% has been reached under the budget in force.
    assert crossed("5", "3", "3.10") == []
    assert crossed("5", "3", "3.10", catch_up=True) == [50]


def test_a_budget_raised_mid_period_owes_nothing_yet():
    # $6 of $10 (50% alerted); raised to $20 it is 30%.
    assert crossed("20", "6", "6.5", catch_up=True) == []
    assert crossed("20", "9.9", "10.5") == [50]


# -- the rows the ledger's moves make (alerts.services) -------------------------------------


def spend_of(ledger, before: str, after: str):
    from keys.services import LedgerSpend

    return LedgerSpend(ledger.pk, ledger.api_key_id, ledger.user_id, ledger.period, D(before),
                       D(after))  # fmt: skip


@pytest.fixture
def key_ledger(db):
    from keys.models import QuotaLedger, period_start
    from keys.services import key_issue

    api_key, _ = key_issue(username="carol", budget_usd=D("10"), period="day")
    now = dt.datetime(2026, 3, 14, 15, 9, tzinfo=dt.UTC)
    return QuotaLedger.objects.create(
        api_key=api_key, period="day", period_start=period_start("day", now)
    )


NOW = dt.datetime(2026, 3, 14, 15, 9, tzinfo=dt.UTC)


def test_crossing_two_thresholds_makes_one_row_each_and_never_a_second(key_ledger):
    from alerts.models import Alert
    from alerts.services import budget_alerts_record

    budget_alerts_record(spends=[spend_of(key_ledger, "4", "8.5")], now=NOW)
    budget_alerts_record(spends=[spend_of(key_ledger, "4", "8.5")], now=NOW)  # a retried write
    rows = list(Alert.objects.order_by("threshold"))
    assert [(a.threshold, a.scope, a.spent_usd, a.budget_usd) for a in rows] == [
        (50, "key", D("8.5"), D("10")),
        (80, "key", D("8.5"), D("10")),
    ]
    assert {a.period_start for a in rows} == {dt.datetime(2026, 3, 14, tzinfo=dt.UTC)}
    assert {a.key_prefix for a in rows} == {key_ledger.api_key.prefix}


def test_no_query_when_the_spend_did_not_grow_or_the_owner_has_no_budget(key_ledger):
    from alerts.services import budget_alerts_record
    from keys.models import QuotaLedger
    from keys.services import key_issue

    with CaptureQueriesContext(connection) as queries:
        budget_alerts_record(spends=[spend_of(key_ledger, "4", "4")], now=NOW)
    assert len(queries) == 0

    free_key, _ = key_issue(username="dave")
    free = QuotaLedger.objects.create(api_key=free_key, period="total", period_start=NOW)
    budget_alerts_record(spends=[spend_of(free, "0", "1")], now=NOW)  # reads its limits once
    with CaptureQueriesContext(connection) as queries:
        budget_alerts_record(spends=[spend_of(free, "1", "2")], now=NOW)
    assert len(queries) == 0

    # A budgeted owner whose move crosses nothing, once its budget is known: no query either.
    budget_alerts_record(spends=[spend_of(key_ledger, "1", "2")], now=NOW)
    with CaptureQueriesContext(connection) as queries:
        budget_alerts_record(spends=[spend_of(key_ledger, "2", "3")], now=NOW)
    assert len(queries) == 0


def test_a_lowered_budget_alerts_the_threshold_it_puts_behind_the_spend(key_ledger, settings):
    from alerts.models import Alert
    from alerts.services import budget_alerts_record
    from keys.services import key_update_limits

    settings.PROXY_KEY_CACHE_SECONDS = 0  # limit edits apply at once
    budget_alerts_record(spends=[spend_of(key_ledger, "2", "3")], now=NOW)
    assert not Alert.objects.exists()
    key_update_limits(api_key=key_ledger.api_key, budget_usd=D("5"))
    budget_alerts_record(spends=[spend_of(key_ledger, "3", "3.10")], now=NOW)
    alert = Alert.objects.get()
    assert (alert.threshold, alert.budget_usd, alert.spent_usd) == (50, D("5"), D("3.10"))


def test_a_user_budget_alerts_in_the_user_scope(db):
    from alerts.models import Alert
    from alerts.services import budget_alerts_record
    from keys.models import QuotaLedger
    from keys.services import key_issue, user_limit_set

    api_key, _ = key_issue(username="erin")
    user_limit_set(user=api_key.user, budget_usd=D("2"), period="month")
    ledger = QuotaLedger.objects.create(
        user=api_key.user, period="month", period_start=dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    )
    budget_alerts_record(spends=[spend_of(ledger, "0.99", "1.00")], now=NOW)
    alert = Alert.objects.get()
    assert (alert.scope, alert.username, alert.key_prefix, alert.api_key) == (
        "user", "erin", "", None,
    )  # fmt: skip


def test_a_ledger_of_a_period_no_longer_in_force_has_no_budget(key_ledger):
    from alerts.models import Alert
    from alerts.services import budget_alerts_record
    from keys.services import key_update_limits

    key_update_limits(api_key=key_ledger.api_key, period="month")  # the day's row settles late
    budget_alerts_record(spends=[spend_of(key_ledger, "0", "9")], now=NOW)
    assert not Alert.objects.exists()


def test_a_raised_budget_never_alerts_a_threshold_twice_in_a_period(key_ledger, settings):
    from alerts.models import Alert
    from alerts.services import budget_alerts_record
    from keys.services import key_update_limits

    settings.PROXY_KEY_CACHE_SECONDS = 0
    budget_alerts_record(spends=[spend_of(key_ledger, "4", "6")], now=NOW)  # 60% of $10
    key_update_limits(api_key=key_ledger.api_key, budget_usd=D("20"))
    budget_alerts_record(spends=[spend_of(key_ledger, "6", "6.5")], now=NOW)  # 32.5%
    budget_alerts_record(spends=[spend_of(key_ledger, "9.9", "10.5")], now=NOW)  # 50% again
    assert list(Alert.objects.values_list("threshold", "budget_usd")) == [(50, D("10"))]
