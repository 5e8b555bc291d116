"""A team budget refusing a member's call, in a real browser: an operator makes a team with a
small monthly budget and two members in the admin; one member calls through the running proxy
(official SDK) until the team's budget refuses; the member finds the refusal and its message
on their dashboard, and the team admin finds the team's spend on the team's page.

Screenshots of each page go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_browser import _log_in
from tests.e2e import records_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BUDGET = Decimal("0.002")


def _pick_user(page, row: int, username: str) -> None:
    """Choose `username` in the member row's user box (the admin's autocomplete widget)."""
    page.locator(f"#members-{row} .field-user .select2-selection").click()
    page.fill(".select2-container--open .select2-search__field", username)
    page.locator(".select2-results__option", has_text=username).first.click()


def test_a_team_budget_refuses_a_members_call(live_server, page, staff, e2e):
    import openai
    from django.contrib.auth import get_user_model
    from django.db.models import Sum

    from keys.models import QuotaLedger, Team
    from keys.money import usd
    from usage.charts import format_usd
    from usage.models import UsageRecord

    # Bodies kept, so her refused request's page quotes the message she was answered with.
    mia_secret = e2e.key("mia", log_bodies=True)
    e2e.key("tom")
    for name in ("mia", "tom"):
        user = get_user_model().objects.get(username=name)
        user.set_password(f"{name}-pass-1")
        user.save()

    # The operator makes the team in the admin: a budget, the period, two members.
    page.goto(f"{live_server.url}/admin/keys/team/add/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pass")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/admin/keys/team/add/")
    page.fill("#id_name", "platform")
    page.fill("#id_budget_usd", str(BUDGET))
    page.select_option("#id_period", "month")
    for row, (username, is_admin) in enumerate([("mia", False), ("tom", True)]):
        page.locator(".add-row a").click()
        _pick_user(page, row, username)
        if is_admin:
            page.check(f"#id_members-{row}-is_admin")
    page.screenshot(path=str(ARTIFACTS / "team-admin-add.png"), full_page=True)
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/keys/team/")
    row = page.locator("#result_list tbody tr", has_text="platform")
    assert "2" in row.locator("td.field-members").inner_text()
    assert row.locator("td.field-remaining").inner_text() == usd(BUDGET)
    page.screenshot(path=str(ARTIFACTS / "team-admin-list.png"), full_page=True)
    team = Team.objects.get(name="platform")
    members = dict(team.members.values_list("user__username", "is_admin"))
    assert members == {"mia": False, "tom": True}

    # Mia calls until the team's budget has no room for another request.
    client = e2e.client(mia_secret)
    granted, refusal = 0, None
    for _ in range(60):
        try:
            client.chat.completions.create(
                model="gpt-4o",
                max_tokens=40,
                messages=[{"role": "user", "content": "Say hello in a few words."}],
            )
            granted += 1
        except openai.RateLimitError as exc:
            refusal = exc
            break
    assert refusal is not None, "the team budget never refused"
    assert granted >= 1
    assert refusal.status_code == 429
    assert refusal.code == "insufficient_quota"
    message = refusal.body["message"]
    assert "your team" in message

    records = records_for(mia_secret, granted + 1)
    assert records[-1].status_code == 429
    ledger = QuotaLedger.objects.get(team=team)
    spent = UsageRecord.objects.filter(team_ledger_id=ledger.pk).aggregate(s=Sum("cost_usd"))["s"]
    assert ledger.spent_usd == spent == sum(r.cost_usd for r in records if r.cost_usd)
    assert ledger.reserved_usd == 0
    assert ledger.spent_usd <= BUDGET

    # Mia finds the refusal on her dashboard, and why on its page.
    page.context.clear_cookies()
    _log_in(page, live_server, "mia", "mia-pass-1")
    team_line = page.locator("#budgets-table tr", has_text="Team platform")
    assert format_usd(ledger.spent_usd) in team_line.inner_text()
    refused = page.locator("#recent-requests tbody tr", has_text="429").first
    assert "insufficient_quota" in refused.inner_text()
    assert page.locator("#team-link").count() == 0  # not a team admin
    page.screenshot(path=str(ARTIFACTS / "team-member-refused.png"), full_page=True)
    refused.locator("a").first.click()
    page.wait_for_url(f"**/dashboard/requests/{records[-1].pk}/")
    shown = page.locator("#error-message").inner_text()
    assert "your team" in shown and shown.strip() == message.strip()
    page.screenshot(path=str(ARTIFACTS / "team-member-refused-detail.png"), full_page=True)

    # Tom, the team admin, follows his dashboard's link to the team's page.
    page.context.clear_cookies()
    _log_in(page, live_server, "tom", "tom-pass-1")
    page.click("#team-link")
    page.wait_for_url(f"**/dashboard/teams/{team.pk}/**")
    assert page.locator("h1").inner_text() == "Team platform"
    budget_row = page.locator("#budgets-table tbody tr").inner_text()
    assert format_usd(ledger.spent_usd) in budget_row and format_usd(BUDGET) in budget_row
    assert page.locator("#total-spend").inner_text() == format_usd(ledger.spent_usd)
    mia_row = page.locator("#table-by-member tr[data-label=mia]")
    assert mia_row.locator("td").nth(1).inner_text() == str(granted + 1)  # requests
    assert mia_row.locator("td").last.inner_text() == format_usd(ledger.spent_usd)
    assert page.locator("#table-by-member tr[data-label=tom]").count() == 1
    assert page.locator("#recent-requests tbody tr").count() == granted + 1
    page.screenshot(path=str(ARTIFACTS / "team-dashboard.png"), full_page=True)
    page.locator("#table-by-member a", has_text="mia").click()
    page.wait_for_url("**/dashboard/users/mia/**")
    assert page.locator("h1").inner_text() == "Usage of mia"
    page.screenshot(path=str(ARTIFACTS / "team-admin-member-dashboard.png"), full_page=True)
