"""The admin shows every alert and every try at it, read-only, with no secret on the page."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

NOW = dt.datetime(2026, 3, 14, 15, 9, tzinfo=dt.UTC)


@pytest.fixture
def tried_alert(bob_key):
    from alerts.models import Alert, AlertDelivery

    api_key, _ = bob_key
    alert = Alert.objects.create(
        kind="budget.threshold", scope="key", user=api_key.user, api_key=api_key,
        username="bob", key_prefix=api_key.prefix, period="total",
        period_start=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), threshold=80,
        budget_usd=Decimal("1"), spent_usd=Decimal("0.8000125"), created_at=NOW,
        next_attempt_at=NOW, status="sent", attempts=2, sent_at=NOW,
    )  # fmt: skip
    for attempt, ok in ((1, False), (2, True)):
        AlertDelivery.objects.create(
            alert=alert, attempt=attempt, channel="webhook", target="https://hooks.example.com",
            started_at=NOW, ok=ok, status_code=204 if ok else 503,
            error="" if ok else "HTTP 503", body='{"type":"budget.threshold"}',
        )  # fmt: skip
    return alert


def test_an_alert_page_shows_its_payload_and_every_try(admin_client, tried_alert, bob_key):
    _, secret = bob_key
    page = admin_client.get(f"/admin/alerts/alert/{tried_alert.pk}/change/").content.decode()
    assert "&quot;spent_usd&quot;: &quot;0.8000125&quot;" in page
    assert "&quot;threshold&quot;: 80" in page
    assert "HTTP 503" in page and "https://hooks.example.com" in page
    assert secret not in page
    assert 'name="_save"' not in page  # read-only


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("", 1),
        ("status__exact=sent", 1),
        ("status__exact=failed", 0),
        ("q=bob", 1),
        ("q=carol", 0),
        ("kind__exact=key.expiring", 0),
        ("scope__exact=user", 0),
        ("threshold=80", 1),
        ("threshold=50", 0),
    ],
)
def test_the_alert_list_filters(admin_client, tried_alert, query, shown):
    page = admin_client.get(f"/admin/alerts/alert/?{query}").content.decode()
    assert page.count(f"/admin/alerts/alert/{tried_alert.pk}/change/") == shown


def test_the_delivery_list_filters_by_outcome(admin_client, tried_alert):
    failed = admin_client.get("/admin/alerts/alertdelivery/?ok__exact=0").content.decode()
    assert "HTTP 503" in failed
    assert admin_client.post(f"/admin/alerts/alert/{tried_alert.pk}/delete/").status_code == 403


def test_money_is_the_exact_decimal_and_the_signature_is_hmac_sha256():
    import hashlib
    import hmac

    from alerts.messages import exact_usd, signature

    assert [exact_usd(Decimal(v)) for v in ("1", "0.5", "0.000013500000", "100", "0")] == [
        "1.00", "0.50", "0.0000135", "100.00", "0.00",
    ]  # fmt: skip
    body = b'{"type":"budget.threshold"}'
    assert signature(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({}, "django.core.mail.backends.console.EmailBackend"),
        ({"EMAIL_HOST": "smtp.example.com"}, "django.core.mail.backends.smtp.EmailBackend"),
        ({"ALERT_WEBHOOK_URL": "https://hooks.example.com/x"}, "ALERT_WEBHOOK_SECRET"),
        ({"ALERT_THRESHOLDS": "50,0"}, "whole percents"),
    ],
)
def test_the_settings_of_alerts(env, outcome):
    """With no EMAIL_HOST emails go to the log; a webhook needs its secret; thresholds are
    whole percents."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EMAIL_", "ALERT_"))}
    done = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.EMAIL_BACKEND)"],
        cwd=Path(__file__).resolve().parents[2],
        env={**clean, "DJANGO_SETTINGS_MODULE": "proxyserver.settings", **env},
        capture_output=True,
        text=True,
    )
    assert outcome in done.stdout + done.stderr
