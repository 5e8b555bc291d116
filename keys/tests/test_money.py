"""Money as people and clients read it: two to six decimals, half to even, never `0E-12`, in
the keys' API, `/v1/proxy/me` and the quota's refusal message alike."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from keys.models import ApiKey, QuotaLedger, period_start
from keys.money import usd, usd_json
from keys.selectors import key_info_for_secret, key_usage_report
from keys.services import QuotaExceeded, key_issue, quota_reserve
from tests.factories import request_record

NOW = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC)
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


@pytest.mark.django_db
def test_the_keys_api_shows_a_budget_of_5_as_5_00(staff):
    client = APIClient()
    client.login(username="staff", password="staff-pass")
    created = client.post(
        "/api/keys/", {"username": "gus", "budget_usd": "5"}, format="json"
    ).json()
    assert created["budget_usd"] == "5.00"
    tiny = client.patch(
        f"/api/keys/{created['id']}/", {"budget_usd": "0.000000000001"}, format="json"
    ).json()
    assert tiny["budget_usd"] == "0.00"
    # Shown rounded, kept exact.
    assert client.get(f"/api/keys/{created['id']}/").json()["budget_usd"] == "0.00"
    assert ApiKey.objects.get(pk=created["id"]).budget_usd == PICO


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_key_caches")
def test_proxy_me_shows_spend_and_remaining_rounded_once():
    api_key, secret = key_issue(username="hana", budget_usd=Decimal(5), period="total")
    QuotaLedger.objects.create(
        api_key=api_key,
        period="total",
        period_start=period_start("total", NOW),
        spent_usd=Decimal("0.0000125"),
        reserved_usd=PICO,
    )
    report = key_usage_report(key=key_info_for_secret(secret), now=NOW)

    assert report["limits"]["key"]["budget_usd"] == "5.00"
    assert report["limits"]["user"]["budget_usd"] is None
    usage = report["usage"]["key"]
    assert usage["spent_usd"] == "0.000012"
    assert usage["reserved_usd"] == "0.00"
    # 5 - 0.0000125 - 0.000000000001 = 4.999987499999, rounded once: not 5.00 - 0.000012.
    assert usage["remaining_usd"] == "4.999987"
    assert report["usage"]["user"]["spent_usd"] == "0.00"
    assert report["usage"]["user"]["remaining_usd"] is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_key_caches")
def test_a_refusal_names_the_budget_and_the_cost_in_dollars_and_cents():
    _, secret = key_issue(username="ivan", budget_usd=Decimal(5))
    key = key_info_for_secret(secret)
    with pytest.raises(QuotaExceeded) as refused:
        quota_reserve(
            key=key,
            cost=Decimal("6.0000125"),
            tokens=10,
            now=NOW,
            record=request_record(key, created_at=NOW),
        )
    assert "($5.00)" in str(refused.value)
    assert "(up to $6.000012)" in str(refused.value)
