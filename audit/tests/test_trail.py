"""The audit trail as an operator reads it: each change of a key, a limit, a user or a price,
by whom, when and through what (admin, API, dashboard, a manage.py command), with no secret."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from keys.models import ApiKey, UserLimit
from keys.services import key_issue
from keys.tests.test_api_keys import basic
from tests.servers import ROOT, database_url

pytestmark = pytest.mark.django_db


def entries(model: type) -> list[LogEntry]:
    kind = ContentType.objects.get_for_model(model)
    return list(LogEntry.objects.filter(content_type=kind).order_by("timestamp", "id"))


def test_a_limit_changed_in_the_admin_says_who_what_and_how(admin_client, admin_user):
    key, secret = key_issue(username="alice", budget_usd=Decimal("20"), period="month")
    form = {
        "user": key.user_id,
        "name": "alice laptop",
        "budget_usd": "35",
        "period": "month",
        "budget_mode": "",
        "allowed_models": "",
    }
    page = admin_client.post(f"/admin/keys/apikey/{key.pk}/change/", form, follow=True)
    assert page.status_code == 200
    change = entries(ApiKey)[-1]
    assert change.actor == admin_user and change.additional_data["via"] == "admin"
    assert [Decimal(v) for v in change.changes_dict["budget_usd"]] == [20, 35]
    assert change.changes_dict["name"] == ["", "alice laptop"]
    assert change.remote_addr == "127.0.0.1"
    text = str([(e.changes, e.object_repr, e.serialized_data) for e in LogEntry.objects.all()])
    assert secret not in text and key.key_hash not in text  # no secret, not even its hash
    listing = admin_client.get("/admin/auditlog/logentry/").content.decode()
    assert "admin" in listing and "budget_usd" in listing


def test_a_limit_changed_through_the_api_is_the_api_users(staff):
    key_issue(username="bob")
    api = basic("staff", "staff-pass")
    assert api.put("/api/users/bob/limits/", {"budget_usd": "9"}, format="json").status_code == 200
    made = entries(UserLimit)[-1]
    assert made.actor == staff and made.additional_data["via"] == "api"
    assert Decimal(made.changes_dict["budget_usd"][1]) == 9


def test_a_user_rotating_their_own_key_is_on_the_trail(client):
    from keys.selfservice import user_max_keys_set

    key, _ = key_issue(username="carol")
    carol = key.user
    carol.set_password("carol-pass-123")
    carol.save()
    user_max_keys_set(user=carol, max_keys=2)
    client.login(username="carol", password="carol-pass-123")
    client.post(f"/accounts/keys/{key.id}/rotate", {"grace": "0"})
    revoked = [e for e in entries(ApiKey) if "revoked_at" in (e.changes_dict or {})]
    assert revoked and revoked[-1].actor == carol
    assert revoked[-1].additional_data["via"] == "dashboard"
    assert not [e for e in entries(type(carol)) if "password" in (e.changes_dict or {})]


@pytest.mark.django_db(transaction=True)
def test_a_command_is_named_with_the_system_user_that_ran_it():
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "dave", "--budget", "5"],
        cwd=ROOT,
        env={"DATABASE_URL": database_url(), "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [made] = entries(ApiKey)
    assert made.actor is None and made.action == LogEntry.Action.CREATE
    assert made.additional_data["via"] == "manage.py create_api_key"
    assert made.additional_data["os_user"]
    assert done.stdout.strip().splitlines()[-1] not in str(made.changes)


def test_a_price_edit_is_audited_the_shipped_table_is_not(admin_client, tmp_path):
    from usage.models import ModelPrice
    from usage.prices import prices_load

    ModelPrice.objects.all().delete()
    LogEntry.objects.all().delete()
    prices_load()  # an empty table filled with the shipped prices: not a change
    assert entries(ModelPrice) == []
    edited = tmp_path / "prices.csv"
    edited.write_text(
        "model,mode,input_per_1m,output_per_1m,source,source_date\n"
        "gpt-4o-mini,chat,0.2,0.8,test,2099-01-01\n"
    )
    prices_load(path=edited)
    [change] = entries(ModelPrice)
    assert change.action == LogEntry.Action.CREATE and "gpt-4o-mini" in change.object_repr
