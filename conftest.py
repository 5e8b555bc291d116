"""Fixtures shared by every app's tests: named actors, as in healthchecks' hc/test.py."""

from __future__ import annotations

from decimal import Decimal

import pytest


@pytest.fixture
def staff(django_user_model):
    """An operator: staff and superuser, password "staff-pass"."""
    return django_user_model.objects.create_superuser("staff", "staff@example.com", "staff-pass")


@pytest.fixture
def alice_key(db):
    """Alice, a user with one key and no limits: returns (ApiKey, secret)."""
    from keys.services import key_issue

    return key_issue(username="alice", name="alice laptop")


@pytest.fixture
def bob_key(db):
    """Bob, another user, with a $1 total budget: returns (ApiKey, secret)."""
    from keys.services import key_issue

    return key_issue(username="bob", name="bob ci", budget_usd=Decimal("1"))


@pytest.fixture
def fresh_key_caches():
    """Clear the per-process key and ledger-id caches around a test: they outlive a test's
    database, and an id or a key from a flushed database must not leak into the next test."""
    from keys import selectors, services

    services._ledger_ids.clear()
    selectors._cache.clear()
    yield
    services._ledger_ids.clear()
    selectors._cache.clear()


pytest_plugins = ["tests.servers", "tests.e2e", "tests.services"]
