"""Single sign-on (OpenID Connect) against a provider the test starts (tests/oidc_provider.py):
users are matched by verified email or created, staff comes from a group claim, an
unverified email is refused, and it is all off until configured."""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth import get_user_model

from keys.services import key_issue
from tests.oidc_provider import Provider

pytestmark = pytest.mark.django_db

USERS = {
    "olivia": {
        "email": "olivia@example.com",
        "email_verified": True,
        "preferred_username": "olivia",
        "given_name": "Olivia",
        "groups": ["proxy-operators", "everyone"],
    },
    "uma": {"email": "uma@example.com", "email_verified": True, "groups": ["everyone"]},
    "ally": {"email": "ALICE@example.com", "email_verified": True, "preferred_username": "ally"},
    "mallory": {"email": "alice@example.com", "email_verified": False},
}


@pytest.fixture
def idp(settings):
    with Provider({name: dict(claims) for name, claims in USERS.items()}) as provider:
        for name, value in provider.settings().items():
            setattr(settings, name, value)
        yield provider


def sso_login(client, username: str, next_path: str = "/dashboard/"):
    start = client.get(f"/oidc/authenticate/?next={next_path}")
    assert start.status_code == 302
    back = requests.get(start["Location"] + f"&login_as={username}", allow_redirects=False)
    assert back.status_code == 302
    return client.get(back.headers["Location"].removeprefix("http://testserver"), follow=True)


def test_a_member_of_the_staff_group_is_an_operator(client, idp):
    page = sso_login(client, "olivia", "/admin/")
    assert page.redirect_chain[-1][0] == "/admin/" and page.status_code == 200
    olivia = get_user_model().objects.get(username="olivia")
    assert olivia.is_staff and olivia.is_superuser and olivia.first_name == "Olivia"
    assert not olivia.has_usable_password()


def test_an_existing_user_is_matched_by_verified_email(client, idp):
    key, _ = key_issue(username="alice")
    alice = key.user
    alice.email = "alice@example.com"
    alice.save()
    page = sso_login(client, "ally")
    assert page.status_code == 200 and page.context["user"] == alice
    assert get_user_model().objects.count() == 1  # nobody new


def test_an_unverified_email_takes_over_nobody(client, idp):
    key, _ = key_issue(username="alice")
    key.user.email = "alice@example.com"
    key.user.save()
    page = sso_login(client, "mallory")
    assert page.redirect_chain[-1][0] == "/accounts/login/?sso=failed"
    assert b"did not complete" in page.content
    assert not page.context["user"].is_authenticated


def test_leaving_the_staff_group_ends_staff_at_the_next_login(client, idp):
    sso_login(client, "olivia")
    idp.users["olivia"]["groups"] = ["everyone"]
    client.logout()
    sso_login(client, "olivia")
    olivia = get_user_model().objects.get(username="olivia")
    assert not olivia.is_staff and not olivia.is_superuser
    client.logout()
    plain = sso_login(client, "uma")
    assert plain.context["user"].username == "uma" and not plain.context["user"].is_staff


def test_off_until_configured(client):
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    assert b"Log in with" not in client.get("/accounts/login/").content


def test_the_login_page_offers_it_and_passwords_still_work(client, idp):
    page = client.get("/accounts/login/?next=/dashboard/")
    assert b"Log in with Test IdP" in page.content
    get_user_model().objects.create_user("pat", password="pat-password-1")
    page = client.post(
        "/accounts/login/?next=/dashboard/",
        {"username": "pat", "password": "pat-password-1", "next": "/dashboard/"},
        follow=True,
    )
    assert page.redirect_chain[-1][0] == "/dashboard/" and page.context["user"].username == "pat"
