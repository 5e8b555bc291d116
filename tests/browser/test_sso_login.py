"""Single sign-on in a real browser: the login page's button, the provider's own login form
(the test's OIDC provider, tests/oidc_provider.py), and back on the proxy as an operator
(screenshots saved)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.oidc_provider import Provider

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_sso_login_as_an_operator(live_server, page, settings):
    users = {
        "olivia": {
            "email": "olivia@example.com",
            "email_verified": True,
            "preferred_username": "olivia",
            "groups": ["proxy-operators"],
        }
    }
    with Provider(users) as idp:
        for name, value in idp.settings().items():
            setattr(settings, name, value)
        page.goto(live_server.url + "/dashboard/")
        page.wait_for_url("**/accounts/login/**")
        page.screenshot(path=str(ARTIFACTS / "login-with-sso.png"), full_page=True)
        page.click("#sso-login")
        page.wait_for_url(f"{idp.url}/authorize**")
        page.fill("#login_as", "olivia")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/dashboard/")
        assert page.locator("h1").inner_text() == "All users"  # an operator's dashboard
        assert "olivia" in page.locator(".who-name").inner_text()
        page.screenshot(path=str(ARTIFACTS / "sso-logged-in.png"), full_page=True)
