"""`manage.py ensure_admin` (run by `make run`): ADMIN_PASSWORD, when set, is the admin's password."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def admin_env(monkeypatch, settings):
    """ADMIN_* as .env would give them: through settings, none in the environment."""
    monkeypatch.delenv("ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    settings.ADMIN_USERNAME = "root"
    settings.ADMIN_PASSWORD = ""
    return settings


def ensure_admin(*args: str) -> str:
    out = io.StringIO()
    call_command("ensure_admin", *args, stdout=out)
    return out.getvalue().strip()


def admin():
    return get_user_model().objects.get(username="root")


def test_the_admin_is_made_from_admin_password(admin_env):
    admin_env.ADMIN_PASSWORD = "first-pass-123"

    assert ensure_admin() == "admin user 'root' created"
    assert admin().is_superuser and admin().check_password("first-pass-123")


def test_a_new_admin_password_replaces_the_old_one_at_the_next_start(admin_env):
    admin_env.ADMIN_PASSWORD = "first-pass-123"
    ensure_admin()
    admin_env.ADMIN_PASSWORD = "second-pass-456"

    assert ensure_admin() == "admin user 'root' exists, password set from ADMIN_PASSWORD"
    assert admin().check_password("second-pass-456")
    assert not admin().check_password("first-pass-123")
    assert ensure_admin() == "admin user 'root' exists, password is ADMIN_PASSWORD"


def test_the_environment_beats_dot_env(admin_env, monkeypatch):
    admin_env.ADMIN_PASSWORD = "from-dot-env-123"
    ensure_admin()
    monkeypatch.setenv("ADMIN_PASSWORD", "from-the-environment-456")

    ensure_admin()

    assert admin().check_password("from-the-environment-456")


def test_without_admin_password_a_password_set_in_the_admin_stays(admin_env):
    admin_env.ADMIN_PASSWORD = "first-pass-123"
    ensure_admin()
    user = admin()
    user.set_password("chosen-in-the-admin")
    user.save()
    admin_env.ADMIN_PASSWORD = ""

    assert ensure_admin() == "admin user 'root' exists"
    assert admin().check_password("chosen-in-the-admin")


def test_no_admin_is_made_without_a_password():
    assert ensure_admin().startswith("no admin user made: set ADMIN_PASSWORD")
    assert not get_user_model().objects.filter(username="root").exists()


def test_the_demos_default_password_makes_an_admin_but_never_resets_one(admin_env):
    assert ensure_admin("--default-password", "admin") == "admin user 'root' created"
    assert admin().check_password("admin")
    user = admin()
    user.set_password("the-real-one-789")
    user.save()

    assert ensure_admin("--default-password", "admin") == "admin user 'root' exists"
    assert admin().check_password("the-real-one-789")
