"""The dashboards and the admin in a real browser: log in through the form, see the charts drawn.

Screenshots go to test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.browser.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# (model, dollars per request, endpoint); None is a fine-tune with no price.
MODELS = [
    ("gpt-4o", Decimal("0.042"), "chat/completions"),
    ("gpt-4.1-mini", Decimal("0.0061"), "responses"),
    ("o3-mini", Decimal("0.0183"), "chat/completions"),
    ("gpt-4o-mini", Decimal("0.0009"), "chat/completions"),
    ("text-embedding-3-small", Decimal("0.00002"), "embeddings"),
    ("ft:gpt-4o-mini:acme::custom", None, "chat/completions"),
]


def _fill(username: str, *, seed: int, days: int = 30, budget: Decimal | None = None) -> list:
    """A month of varied traffic for one user on two keys, through the real write path."""
    from keys.models import Period, QuotaLedger, period_start
    from keys.services import key_issue
    from usage.models import UsageRecord
    from usage.services import usage_record_create

    rng = random.Random(seed)
    laptop, _ = key_issue(username=username, name="laptop", budget_usd=budget, period=Period.MONTH)
    ci, _ = key_issue(username=username, name="ci")
    now = timezone.now()
    # A record of day d stays on the date d days ago whatever the hour the test runs at (a
    # window of the last 7 dates then holds all of 7 days' traffic, also just after midnight).
    local = timezone.localtime(now)
    since_midnight = local.hour * 60 + local.minute
    records = []
    for day in range(days):
        for _ in range(rng.randint(2, 7)):
            model, price, endpoint = rng.choice(MODELS[:5] if day % 6 else MODELS)
            key = rng.choice([laptop, ci])
            status = 200 if rng.random() > 0.06 else 429
            volume = Decimal(rng.randint(20, 400)) / 10
            prompt = rng.randint(200, 9000)
            records.append(
                usage_record_create(
                    record=UsageRecord(
                        created_at=now
                        - dt.timedelta(days=day, minutes=min(rng.randint(0, 600), since_midnight)),
                        user=key.user,
                        api_key=key,
                        key_prefix=key.prefix,
                        endpoint=endpoint,
                        model=model,
                        response_model=model,
                        stream=endpoint != "embeddings" and rng.random() < 0.5,
                        status_code=status,
                        prompt_tokens=prompt,
                        cached_tokens=prompt // 3 if rng.random() < 0.3 else 0,
                        completion_tokens=0 if endpoint == "embeddings" else rng.randint(20, 900),
                        cost_usd=None if price is None or status >= 400 else price * volume,
                        latency_ms=rng.randint(180, 4200),
                        request_body=f'{{"model": "{model}", "messages": '
                        f'[{{"role": "user", "content": "Summarise ticket {day}"}}]}}',
                        response_body='{"id": "chatcmpl-demo", "object": "chat.completion"}',
                    ),
                )
            )
    if budget is not None:
        QuotaLedger.objects.create(
            api_key=laptop,
            period=Period.MONTH,
            period_start=period_start(Period.MONTH, now),
            spent_usd=budget * Decimal("0.62"),
            reserved_usd=Decimal("0.35"),
        )
    return records


def _log_in(page, live_server, username: str, password: str, next_path: str = "/dashboard/"):
    page.goto(live_server.url + next_path)
    assert "/accounts/login/" in page.url  # anonymous visitors are sent to the form
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{next_path}")


def test_user_dashboard_draws_charts(live_server, page, django_user_model):
    _fill("alice", seed=1, budget=Decimal("50"))
    _fill("bob", seed=2)
    alice = django_user_model.objects.get(username="alice")
    alice.set_password("alice-pass")
    alice.save()

    _log_in(page, live_server, "alice", "alice-pass")

    assert page.locator("h1").inner_text() == "Your usage"
    assert page.locator("#daily-spend rect.segment").count() > 20
    assert page.locator("#daily-spend g.day").count() == 30
    box = page.locator("#daily-spend").bounding_box()
    assert box["width"] > 600 and box["height"] > 150  # laid out, not collapsed by CSS
    bars = page.locator("#spend-by-model rect.bar")
    assert bars.count() == len(MODELS)
    assert page.locator("#spend-by-model text.bar-value", has_text="unpriced").count() == 1
    assert page.locator("#budgets-table").inner_text().count("no budget") == 1
    assert "bob" not in page.locator("main").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-user.png"), full_page=True)
    page.locator("#spend-by-model").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "dashboard-user-charts.png"))

    page.locator("#recent-requests tbody a").first.click()
    page.wait_for_url("**/dashboard/requests/*/")
    assert "Summarise ticket" in page.locator("#request-body").inner_text()
    page.screenshot(path=str(ARTIFACTS / "request-detail.png"), full_page=True)

    page.goto(live_server.url + "/dashboard/")
    page.click("text=Log out")
    page.wait_for_url("**/accounts/login/")


def test_staff_dashboard_and_admin(live_server, page, staff):
    _fill("alice", seed=1, budget=Decimal("50"))
    _fill("bob", seed=2)
    _fill("carol", seed=3, days=12)

    _log_in(page, live_server, "staff", "staff-pass")

    assert page.locator("h1").inner_text() == "All users"
    assert page.locator("#top-spenders rect.bar").count() == 3
    assert page.locator("#daily-spend rect.segment").count() > 20
    assert page.locator("#table-by-user tbody tr").count() == 3
    page.screenshot(path=str(ARTIFACTS / "dashboard-staff.png"), full_page=True)

    page.click("#table-by-user >> text=bob")
    page.wait_for_url("**/dashboard/users/bob/*")
    assert page.locator("h1").inner_text() == "Usage of bob"
    assert page.locator("#spend-by-model rect.bar").count() == len(MODELS)

    page.goto(live_server.url + "/admin/")
    assert "Site administration" in page.title()
    page.screenshot(path=str(ARTIFACTS / "admin-index.png"), full_page=True)
    response = page.goto(live_server.url + "/admin/usage/usagerecord/")
    assert response.status == 200, "the usage records admin is not registered"
    assert page.locator("#result_list tbody tr").count() > 0
    page.screenshot(path=str(ARTIFACTS / "admin-usage.png"), full_page=True)
