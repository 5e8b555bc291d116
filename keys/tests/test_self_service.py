"""Self-service, as a user meets it: an invitation link that sets a password once, a keys page
where they make, rotate and revoke their own keys within their operator's cap, password change
and reset; and the keys they make work through the running proxy (official SDK)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from keys.models import ApiKey
from keys.selfservice import user_invite, user_max_keys_set
from tests.e2e import records_for

pytestmark = pytest.mark.django_db
SECRET = re.compile(r"sk-proxy-[A-Za-z0-9_\-]{20,}")


def invited(client, username: str = "carol", max_keys: int | None = 2, **kwargs):
    """Invite, follow the link, set a password: the client is logged in on the keys page."""
    invitation = user_invite(username=username, base_url="http://testserver", **kwargs)
    user = get_user_model().objects.get(username=username)
    if max_keys is not None:
        user_max_keys_set(user=user, max_keys=max_keys)
    path = invitation.link.removeprefix("http://testserver")
    page = client.get(path, follow=True)  # Django swaps the token for a session-held one
    assert page.status_code == 200 and b"Set your password" in page.content
    done = client.post(
        page.redirect_chain[-1][0],
        {"new_password1": "correct horse battery", "new_password2": "correct horse battery"},
        follow=True,
    )
    assert done.redirect_chain[-1][0] == "/accounts/keys/"
    return user, invitation


def make_key(client, name: str = "laptop", **fields) -> str:
    page = client.post("/accounts/keys/", {"name": name, "period": "month", **fields})
    assert page.status_code == 200, page.content
    assert page["Cache-Control"] == "no-store"
    return SECRET.search(page.content.decode()).group(0)


def test_an_invitation_sets_a_password_once_and_logs_the_user_in(client):
    user, invitation = invited(client, email="carol@example.com")
    assert mail.outbox[0].to == ["carol@example.com"] and invitation.link in mail.outbox[0].body
    user.refresh_from_db()
    assert user.check_password("correct horse battery")
    assert client.get("/accounts/keys/").status_code == 200  # logged in by the link
    client.logout()
    again = client.get(invitation.link.removeprefix("http://testserver"), follow=True)
    assert b"This link no longer works" in again.content
    assert client.login(username="carol", password="correct horse battery")


def test_keys_are_made_up_to_the_cap_and_the_secret_is_shown_once(client):
    invited(client, max_keys=2)
    first = make_key(client, "laptop", budget_usd="5")
    second = make_key(client, "ci")
    assert first != second
    refused = client.post("/accounts/keys/", {"name": "third", "period": "month"})
    assert refused.status_code == 403 and b"the most your operator allows (2)" in refused.content
    listing = client.get("/accounts/keys/").content.decode()
    assert not SECRET.search(listing)  # never again
    assert "laptop" in listing and "$5" in listing
    key = ApiKey.objects.get(name="laptop")
    assert key.budget_usd == Decimal("5") and key.period == "month"


def test_without_a_cap_the_user_cannot_make_keys(client):
    invited(client, max_keys=None)
    page = client.get("/accounts/keys/")
    assert b"Your operator makes your keys" in page.content
    refused = client.post("/accounts/keys/", {"name": "mine", "period": "month"})
    assert refused.status_code == 403 and not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"budget_usd": "abc"}, b"Not an amount in USD"),
        ({"budget_usd": "-1"}, b"from 0 to under"),
        ({"budget_usd": "0.0000001"}, b"At most 6 decimal places"),
        ({"expires": "2001-01-01"}, b"a day in the future"),
        ({"name": ""}, b"This field is required"),
    ],
)
def test_bad_input_is_named_not_a_500(client, fields, message):
    invited(client)
    page = client.post("/accounts/keys/", {"name": "k", "period": "month", **fields})
    assert page.status_code == 400 and message in page.content
    assert not ApiKey.objects.exists()


def test_rotation_keeps_the_old_key_for_its_grace_and_nobody_touches_anothers_key(client):
    invited(client, max_keys=1)
    make_key(client, "app")
    old = ApiKey.objects.get()
    page = client.post(f"/accounts/keys/{old.id}/rotate", {"grace": "86400"})
    assert page.status_code == 200 and SECRET.search(page.content.decode())
    old.refresh_from_db()
    new = ApiKey.objects.exclude(pk=old.pk).get()
    assert new.name == "app" and new.user == old.user and new.period == old.period
    assert abs(old.expires_at - (timezone.now() + dt.timedelta(days=1))) < dt.timedelta(minutes=1)
    # Someone else's key: not theirs to rotate or revoke.
    other, _ = ApiKey.objects.get_or_create(
        user=get_user_model().objects.create(username="dave"), prefix="x", key_hash="y" * 64
    )
    for action in ("rotate", "revoke"):
        page = client.post(f"/accounts/keys/{other.id}/{action}", {"grace": "0"}, follow=True)
        assert b"No such key of yours" in page.content
    other.refresh_from_db()
    assert other.revoked_at is None and other.expires_at is None
    bad = client.post(f"/accounts/keys/{new.id}/rotate", {"grace": "9999999"}, follow=True)
    assert b"at most 7 days" in bad.content


def test_password_change_and_reset(client):
    invited(client, email="erin@example.com", username="erin")
    changed = client.post(
        "/accounts/password/",
        {
            "old_password": "correct horse battery",
            "new_password1": "another fine password",
            "new_password2": "another fine password",
        },
        follow=True,
    )
    assert b"Your password is changed" in changed.content
    client.logout()
    mail.outbox.clear()
    sent = client.post("/accounts/password/reset/", {"email": "erin@example.com"}, follow=True)
    assert b"Check your email" in sent.content
    link = re.search(r"http://testserver(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    page = client.get(link, follow=True)
    done = client.post(
        page.redirect_chain[-1][0],
        {"new_password1": "third good password", "new_password2": "third good password"},
        follow=True,
    )
    assert b"Your password is set" in done.content
    assert client.login(username="erin", password="third good password")


def test_the_invite_command_prints_the_link_and_sets_the_cap(capsys):
    call_command("invite_user", "frank", "--max-keys", "3", "--base-url", "https://proxy.example")
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert link.startswith("https://proxy.example/accounts/invite/")
    assert get_user_model().objects.get(username="frank").proxy_limit.max_keys == 3
    with pytest.raises(CommandError, match="not an email address"):
        call_command("invite_user", "frank", "--email", "nope")


def test_the_admin_invites_and_shows_the_link(admin_client):
    user = get_user_model().objects.create(username="gina")
    page = admin_client.post(
        "/admin/auth/user/",
        {"action": "invite", "_selected_action": [user.pk]},
        follow=True,
    )
    assert re.search(rb"Invitation for gina: http://testserver/accounts/invite/\S+", page.content)


@pytest.mark.django_db(transaction=True)
def test_a_self_made_key_works_through_the_proxy_and_a_revoked_one_stops_at_once(e2e, client):
    invited(client, username="hank", max_keys=2)
    secret = make_key(client, "script")
    sdk = e2e.client(secret)
    sdk.chat.completions.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    key = ApiKey.objects.get(name="script")
    client.post(f"/accounts/keys/{key.id}/rotate", {"grace": "0"})
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert [r.status_code for r in records_for(secret, 2)] == [200, 401]
