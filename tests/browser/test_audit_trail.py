"""The audit trail of a limit change, in a real browser: an operator raises a user's budget in
the admin and finds the change, by whom and through what, on the trail (screenshot saved)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.browser.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_limit_change_is_on_the_audit_trail(live_server, page, staff):
    from keys.models import UserLimit
    from keys.services import key_issue, user_limit_set

    key, _ = key_issue(username="alice")
    limit = user_limit_set(user=key.user, budget_usd=Decimal("10"), period="month")

    page.goto(f"{live_server.url}/admin/keys/userlimit/{limit.pk}/change/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pass")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(f"**/admin/keys/userlimit/{limit.pk}/change/")
    page.fill("#id_budget_usd", "25")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/keys/userlimit/")
    assert UserLimit.objects.get(pk=limit.pk).budget_usd == Decimal("25")

    page.goto(f"{live_server.url}/admin/auditlog/logentry/")
    row = page.locator("#result_list tbody tr").first
    text = row.inner_text()
    assert "staff" in text and "admin" in text and "budget_usd" in text
    page.screenshot(path=str(ARTIFACTS / "audit-trail.png"), full_page=True)
    row.locator("a").first.click()
    assert "25" in page.locator("main, #content").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "audit-entry.png"), full_page=True)
