"""The operator console in a real browser: the admin's key and usage lists at a desktop width,
and a user's dashboard by hour with its latency and error-rate charts and request log.

Screenshots of every page go to test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_browser import _fill, _log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_console_at_1400_px(live_server, page, django_user_model):
    from decimal import Decimal

    django_user_model.objects.create_superuser("ops", "ops@example.com", "ops-pass-1")
    # Seven days of traffic, several a day: more than one page of the request log.
    dana = _fill("dana", seed=14, days=7, budget=Decimal("40"))
    dana += _fill("dana", seed=16, days=7)
    assert len(dana) > 50
    _fill("eve", seed=15, days=7)
    page.set_viewport_size({"width": 1400, "height": 900})
    _log_in(page, live_server, "ops", "ops-pass-1")

    page.goto(live_server.url + "/admin/keys/apikey/")
    for column in ("spent this period", "remaining", "last used"):
        assert page.locator("#result_list thead").get_by_text(column).count() >= 1
    assert page.locator("#result_list td.field-remaining", has_text="no budget").count() == 5
    page.screenshot(path=str(ARTIFACTS / "console-admin-keys.png"), full_page=True)

    page.goto(live_server.url + "/admin/usage/usagerecord/")
    assert page.locator("#result_list tbody tr").count() > 10
    # Every column in sight without scrolling: the list's own box does not scroll sideways
    # (its overflow is clipped, so a header's box alone can lie inside the window but out of
    # view), and each header is what the window shows at its place.
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    assert page.evaluate(
        "(() => { const r = document.querySelector('#changelist .results');"
        " return r.scrollWidth <= r.clientWidth; })()"
    )
    for column in ("status", "tokens in / out", "cost (USD)", "latency"):
        header = page.locator("#result_list thead th", has_text=column).first
        box = header.bounding_box()
        assert box and box["x"] + box["width"] <= 1400, column
        shown = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).closest('th')?.innerText || ''",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert column.lower() in shown.lower(), column
    assert page.locator("#result_list img[src*='icon-no']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "console-admin-usage.png"), full_page=True)
    page.fill("input[name=username]", "eve")
    page.press("input[name=username]", "Enter")
    page.wait_for_url("**username=eve**")
    assert page.locator("#result_list tbody tr").count() > 0
    assert page.locator("#result_list td.field-user", has_text="dana").count() == 0
    page.screenshot(path=str(ARTIFACTS / "console-admin-usage-eve.png"), full_page=True)

    from django.utils import timezone

    today = timezone.now().date()
    week = f"from={today - dt.timedelta(days=6)}&to={today}"
    page.goto(live_server.url + f"/dashboard/users/dana/?{week}&group=hour")
    assert page.locator("#daily-spend g.hour").count() == 7 * 24
    assert page.locator("#grouping a.active", has_text="hour").count() == 1
    assert page.locator("#latency path[data-series=p95]").count() == 1
    assert page.locator("#error-rate g.hour").count() > 0
    assert page.locator("#spend-by-key rect.bar").count() == 4
    page.screenshot(path=str(ARTIFACTS / "console-dashboard-hourly.png"), full_page=True)

    page.locator("#requests a[rel=next]").click()
    page.wait_for_url("**page=2**")
    assert page.locator("#recent-requests tbody tr").count() > 0
    assert page.locator("#requests a[rel=prev]").count() == 1
    page.locator("#requests").screenshot(path=str(ARTIFACTS / "console-request-log-page-2.png"))
    page.screenshot(path=str(ARTIFACTS / "console-dashboard-page-2.png"), full_page=True)
