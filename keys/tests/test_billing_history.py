"""Billing history stays: a user or a key with usage cannot be deleted (the admin says why and
what to do instead), and the migration that made it so leaves every row as it was."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext

from keys import selectors
from keys.models import ApiKey, QuotaLedger, UserLimit
from keys.selectors import KeyInfo, key_info_for_secret
from keys.services import KeyInactive, key_issue, quota_reserve, user_limit_set
from tests.factories import request_record
from usage.models import UsageDaily, UsageRecord
from usage.services import usage_records_write

pytestmark = pytest.mark.usefixtures("fresh_key_caches")

NOW = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC)
USERS = "/admin/auth/user/"
KEYS = "/admin/keys/apikey/"
BILLING = (UsageRecord, UsageDaily, QuotaLedger)


def spend(username: str, cost: str, **limits: object) -> tuple[KeyInfo, str]:
    """A key of `username` that made one request costing `cost`, as the relay bills it: a
    reservation on its ledgers, then the finished record and its daily rollup."""
    _, secret = key_issue(username=username, **limits)
    key = key_info_for_secret(secret)
    record = request_record(key, created_at=NOW)
    quota_reserve(key=key, cost=Decimal(cost), tokens=100, now=NOW, record=record)
    record.status_code = 200
    record.completion_tokens = 5
    record.cost_usd = Decimal(cost)
    record.estimated = False
    usage_records_write(records=[record])
    return key, secret


def billing_rows() -> dict[str, list[dict]]:
    return {m.__name__: list(m.objects.order_by("pk").values()) for m in BILLING}


def page_text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


@pytest.fixture
def alice(db):
    """Alice spent $0.25 with one key and has a user limit: every kind of billing row."""
    key, secret = spend("alice", "0.25", budget_usd=Decimal(5))
    user = get_user_model().objects.get(pk=key.user_id)
    user_limit_set(user=user, budget_usd=Decimal(20))
    assert {m: len(rows) for m, rows in billing_rows().items()} == {
        "UsageRecord": 1,
        "UsageDaily": 1,
        "QuotaLedger": 2,  # the key's and the user's
    }
    return user, key, secret


# --- Nothing deletes them ---------------------------------------------------------------------


def test_deleting_a_user_or_key_with_usage_is_refused_and_deletes_nothing(alice):
    user, key, _ = alice
    before = billing_rows()

    with pytest.raises(ProtectedError):
        user.delete()
    with pytest.raises(ProtectedError):
        ApiKey.objects.get(pk=key.id).delete()
    with pytest.raises(ProtectedError):
        get_user_model().objects.filter(pk=user.pk).delete()

    assert billing_rows() == before
    assert ApiKey.objects.filter(pk=key.id).exists() and UserLimit.objects.filter(user=user)


def test_the_admin_refuses_to_delete_a_user_with_usage_and_says_to_deactivate(admin_client, alice):
    user, _, secret = alice
    before = billing_rows()
    url = f"{USERS}{user.pk}/delete/"

    page = page_text(admin_client.get(url))
    assert "The user “alice” cannot be deleted: this user has billing history." in page
    assert "usage records: 1" in page and "usage by day: 1" in page
    assert "quota ledgers: 2" in page  # the user's own ledger and their key's
    assert "deactivate them instead" in page and "untick “Active”" in page
    # Not Django's misleading "your account doesn't have permission" page, no button to confirm.
    assert "permission" not in page and "Yes, I’m sure" not in page

    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 200 and "cannot be deleted" in page_text(response)
    assert get_user_model().objects.filter(pk=user.pk).exists()
    assert key_info_for_secret(secret) is not None  # the key still works
    assert billing_rows() == before


def test_what_the_admin_advises_stops_the_user_and_keeps_their_usage(admin_client, alice):
    user, key, secret = alice
    user.is_active = False
    user.save()

    # Their key stops at once: the quota step refuses even a process that still caches it.
    with pytest.raises(KeyInactive):
        quota_reserve(key=key, cost=Decimal("0.01"), tokens=1, now=NOW, record=request_record(key))
    selectors._cache.clear()
    assert key_info_for_secret(secret) is None
    summary = admin_client.get("/api/usage/summary/", {"group_by": "user"}).json()
    assert [(r["user"], r["cost_usd"]) for r in summary["results"]] == [("alice", "0.25")]


def test_delete_selected_users_refuses_all_while_one_has_usage(admin_client, alice):
    user, _, _ = alice
    carol = get_user_model().objects.create_user("carol")
    before = billing_rows()
    form = {"action": "delete_selected", "_selected_action": [user.pk, carol.pk]}

    page = page_text(admin_client.post(USERS, form))
    assert "The selected users cannot be deleted: they have billing history." in page
    assert "usage records: 1" in page and "deactivate them instead" in page

    response = admin_client.post(USERS, {**form, "post": "yes"})
    assert "cannot be deleted" in page_text(response)
    assert get_user_model().objects.filter(pk__in=[user.pk, carol.pk]).count() == 2
    assert billing_rows() == before


def test_a_user_without_usage_is_deleted_with_their_keys_and_limits_listed_first(
    admin_client, alice
):
    before = billing_rows()
    carol_key, _ = key_issue(username="carol", name="carol laptop")
    carol = carol_key.user
    user_limit_set(user=carol, budget_usd=Decimal(1))
    url = f"{USERS}{carol.pk}/delete/"

    page = page_text(admin_client.get(url))
    assert 'Are you sure you want to delete the user "carol"?' in page
    assert f"API key: {carol_key}" in page and "User limit: limits of carol" in page

    admin_client.post(url, {"post": "yes"})
    assert not get_user_model().objects.filter(username="carol").exists()
    assert not ApiKey.objects.filter(pk=carol_key.pk).exists()
    assert not UserLimit.objects.filter(user_id=carol.pk).exists()
    assert billing_rows() == before  # alice's


def test_the_admin_refuses_to_delete_a_used_key_and_says_to_revoke(admin_client, alice):
    _, key, secret = alice
    before = billing_rows()
    url = f"{KEYS}{key.id}/delete/"

    page = page_text(admin_client.get(url))
    assert "cannot be deleted: this API key has billing history." in page
    assert "usage records: 1" in page and "quota ledgers: 1" in page  # the key's own ledger
    assert "revoke it instead" in page and "Yes, I’m sure" not in page

    admin_client.post(url, {"post": "yes"})
    selected = {"action": "delete_selected", "_selected_action": [key.id], "post": "yes"}
    assert "revoke it instead" in page_text(admin_client.post(KEYS, selected))
    assert key_info_for_secret(secret) is not None
    assert billing_rows() == before


def test_an_unused_key_can_still_be_deleted(admin_client, alice):
    spare, _ = key_issue(username="alice", name="never used")

    assert "Are you sure" in page_text(admin_client.get(f"{KEYS}{spare.pk}/delete/"))
    admin_client.post(f"{KEYS}{spare.pk}/delete/", {"post": "yes"})
    assert not ApiKey.objects.filter(pk=spare.pk).exists()


def test_the_refusal_counts_a_heavy_user_without_reading_their_records(admin_client, alice):
    user, _, _ = alice
    template = UsageRecord.objects.get()
    template.pk = template.uid = None
    UsageRecord.objects.bulk_create([UsageRecord(**{
        f.attname: getattr(template, f.attname) for f in UsageRecord._meta.concrete_fields
    }) for _ in range(500)])  # fmt: skip

    with CaptureQueriesContext(connection) as queries:
        page = page_text(admin_client.get(f"{USERS}{user.pk}/delete/"))

    assert "usage records: 501" in page
    record_reads = [q["sql"] for q in queries if "usage_usagerecord" in q["sql"]]
    assert record_reads and all("COUNT(" in sql for sql in record_reads)


# --- The migration keeps every row ------------------------------------------------------------

BEFORE = [("keys", "0006_budget_mode"), ("usage", "0004_versioned_prices")]
TABLES = (
    "auth_user",
    "keys_apikey",
    "keys_userlimit",
    "keys_quotaledger",
    "usage_usagerecord",
    "usage_usagedaily",
)


def _migrate(targets: list[tuple[str, str]]) -> None:
    MigrationExecutor(connection).migrate(targets)


def _latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def _raw_rows(like: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """Every row of TABLES by column; with `like`, only the columns `like`'s rows have (later
    migrations add columns, each with its default)."""
    with connection.cursor() as cursor:
        rows = {}
        for table in TABLES:
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [c[0] for c in cursor.description]
            found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            if like is not None and like[table]:
                keep = set(like[table][0])
                found = [{k: v for k, v in r.items() if k in keep} for r in found]
            rows[table] = found
    return rows


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_every_row_the_earlier_schema_wrote_and_protects_them():
    try:
        _migrate(BEFORE)
        apps = MigrationExecutor(connection).loader.project_state(BEFORE).apps
        User = apps.get_model("auth", "User")
        Key = apps.get_model("keys", "ApiKey")
        Ledger = apps.get_model("keys", "QuotaLedger")
        Record = apps.get_model("usage", "UsageRecord")
        Daily = apps.get_model("usage", "UsageDaily")
        dora = User.objects.create(username="dora", email="dora@example.com")
        erin = User.objects.create(username="erin", is_active=False)
        key = Key.objects.create(
            user=dora, prefix="sk-proxy-dora01", key_hash="a" * 64, budget_usd=Decimal(5)
        )
        apps.get_model("keys", "UserLimit").objects.create(user=dora, budget_usd=Decimal(9))
        Ledger.objects.create(
            api_key=key,
            period="total",
            period_start=NOW,
            spent_usd=Decimal("1.234567890123"),
            requests=2,
        )
        Ledger.objects.create(user=dora, period="day", period_start=NOW, spent_usd=Decimal(1))
        common = {"created_at": NOW, "endpoint": "chat/completions", "status_code": 200}
        Record.objects.create(
            user=dora,
            api_key=key,
            key_prefix=key.prefix,
            model="gpt-4o",
            cost_usd=Decimal(1),
            **common,
        )
        # A record whose key was deleted under the old SET_NULL rule: the prefix names it.
        Record.objects.create(user=dora, api_key=None, key_prefix="sk-proxy-gone01", **common)
        Record.objects.create(user=erin, key_prefix="sk-proxy-erin01", cost_usd=None, **common)
        Daily.objects.create(day=NOW.date(), user=dora, api_key=key, model="gpt-4o", requests=1)
        Daily.objects.create(day=NOW.date(), user=dora, api_key=None, model="gpt-4o", requests=1)
        before = _raw_rows()

        loader = MigrationExecutor(connection).loader
        ours = [
            (loader.graph.nodes[("keys", "0007_billing_rows_protect_owners")], False),
            (loader.graph.nodes[("usage", "0005_billing_rows_protect_owners")], False),
        ]
        # Not one statement: no table is rebuilt, so a million records migrate instantly.
        for step in ours:
            assert [sql for sql in loader.collect_sql([step]) if not sql.startswith("--")] == []
        _migrate(_latest())

        assert _raw_rows(like=before) == before
        dora_now = get_user_model().objects.get(username="dora")
        erin_now = get_user_model().objects.get(username="erin")
        for owner in (dora_now, erin_now, ApiKey.objects.get(prefix="sk-proxy-dora01")):
            with pytest.raises(ProtectedError):
                owner.delete()
        assert _raw_rows(like=before) == before
        assert UsageRecord.objects.get(key_prefix="sk-proxy-gone01").api_key is None
    finally:
        # Whatever happened, later tests get the full schema.
        _migrate(_latest())
