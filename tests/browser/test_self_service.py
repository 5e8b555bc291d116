"""An invited user in a real browser, from the link their operator gave them to their first
self-made key, and a call with that key through the running proxy (official SDK).

Screenshots of each page go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.e2e import records_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_invited_user_sets_a_password_makes_a_key_and_calls_with_it(live_server, page, e2e):
    from django.contrib.auth import get_user_model

    from keys.selfservice import user_invite, user_max_keys_set

    invitation = user_invite(username="ivy", base_url=live_server.url)
    user_max_keys_set(user=get_user_model().objects.get(username="ivy"), max_keys=2)

    page.goto(invitation.link)
    assert page.locator("h1").inner_text() == "Set your password"
    page.screenshot(path=str(ARTIFACTS / "invite-set-password.png"), full_page=True)
    page.fill("#id_new_password1", "a long and good password")
    page.fill("#id_new_password2", "a long and good password")
    page.click("button[type=submit]")
    page.wait_for_url("**/accounts/keys/")
    assert "0 of the 2 active keys" in page.locator("main").inner_text()
    assert e2e.proxy.url not in page.locator("#connect").inner_text()  # the page's own address
    page.screenshot(path=str(ARTIFACTS / "keys-empty.png"), full_page=True)

    page.fill("#id_name", "notebook")
    page.fill("#id_budget_usd", "2.50")
    page.click("#make-key button[type=submit]")
    secret = page.locator("#secret").inner_text()
    assert secret.startswith("sk-proxy-")
    page.screenshot(path=str(ARTIFACTS / "keys-new-secret.png"), full_page=True)

    reply = e2e.client(secret).chat.completions.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content
    [record] = records_for(secret, 1)
    assert record.user.username == "ivy" and record.status_code == 200

    page.goto(live_server.url + "/accounts/keys/")
    row = page.locator("#keys-table tbody tr").first
    assert "notebook" in row.inner_text() and "never" not in row.inner_text()  # last used
    assert secret not in page.content()
    page.screenshot(path=str(ARTIFACTS / "keys-list.png"), full_page=True)
    page.goto(live_server.url + "/accounts/password/")
    page.screenshot(path=str(ARTIFACTS / "password-change.png"), full_page=True)
