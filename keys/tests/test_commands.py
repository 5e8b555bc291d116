"""Issuing keys from the command line and the original proxy's route; serve's old flags."""

from __future__ import annotations

import base64
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from keys.models import ApiKey, key_hash
from relay.management.commands.serve import database_url


def issue(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip().splitlines()[-1]


@pytest.mark.django_db
def test_create_api_key_prints_the_key_alone_and_stores_only_its_hash():
    secret = issue(
        "erin",
        "--budget",
        "12.50",
        "--period",
        "month",
        "--models",
        "gpt-4o-mini,gpt-4.1*",
        "--rpm",
        "30",
        "--expires",
        "2030-01-01T00:00:00Z",
        "--name",
        "erin ci",
    )

    assert secret.startswith("sk-proxy-") and len(secret) >= len("sk-proxy-") + 32
    key = ApiKey.objects.get(key_hash=key_hash(secret))
    assert key.user.username == "erin" and key.name == "erin ci"
    assert key.budget_usd == Decimal("12.50") and key.period == "month" and key.rpm == 30
    assert key.model_allowed("gpt-4.1-mini") and not key.model_allowed("gpt-4o")
    assert not ApiKey.objects.filter(key_hash=secret).exists()  # never stored as is
    assert secret not in str(ApiKey.objects.filter(pk=key.pk).values().get())


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ["--budget", "ten"],
        ["--budget", "-1"],
        ["--budget", "NaN"],
        ["--expires", "soon"],
        ["--expires", "2020-01-01T00:00:00Z"],
        ["--rpm", "0"],
    ],
)
def test_create_api_key_refuses_bad_flags(args):
    with pytest.raises(CommandError):
        issue("frank", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--budget", "abc"], "not an amount in USD: 'abc'"),
        (["--expires", "2020-01-01"], "--expires is in the past"),
        # Past the column (PostgreSQL refused the row with a traceback; SQLite took it).
        (["--tpm", "100000000000"], "must be between 0 and 2,147,483,647"),
        (["--rpm", "lots"], "not a whole number: 'lots'"),
    ],
)
def test_create_api_key_answers_bad_input_in_one_line_not_a_traceback(tmp_path, args, says):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], env=env, check=True, timeout=120
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "frank", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and done.stdout == ""
    assert says in done.stderr and "Traceback" not in done.stderr


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.django_db
def test_original_create_route_issues_one_key_per_username(client, staff):
    first = client.post("/create_api_key/gina", HTTP_AUTHORIZATION=basic("staff", "staff-pass"))
    second = client.post("/create_api_key/gina", {"user": "staff", "password": "staff-pass"})

    assert first.status_code == 201
    assert ApiKey.objects.filter(
        key_hash=key_hash(first.json()["key"]), user__username="gina"
    ).exists()
    assert (
        second.status_code == 409
        and "already has an active key" in second.json()["error"]["message"]
    )


@pytest.mark.django_db
def test_original_create_route_needs_admin_credentials(client, staff, django_user_model):
    django_user_model.objects.create_user("mallory", password="mallory-pass")
    assert (
        client.post("/create_api_key/hal", HTTP_AUTHORIZATION=basic("staff", "wrong")).status_code
        == 401
    )
    assert (
        client.post(
            "/create_api_key/hal", {"user": "mallory", "password": "mallory-pass"}
        ).status_code
        == 401
    )
    assert not ApiKey.objects.filter(user__username="hal").exists()


@pytest.mark.django_db
def test_original_get_form_is_refused_unless_allowed(client, staff, settings):
    refused = client.get("/create_api_key/ivan?user=staff&password=staff-pass")
    assert (
        refused.status_code == 405 and "LEGACY_CREATE_KEY_GET" in refused.json()["error"]["message"]
    )

    settings.LEGACY_CREATE_KEY_GET = True
    allowed = client.get("/create_api_key/ivan?user=staff&password=staff-pass")
    assert allowed.status_code == 201 and allowed.json()["key"].startswith("sk-proxy-")


def test_serve_maps_the_original_database_flags():
    assert (
        database_url("postgresql", "u", "p@ss", "db.local", "proxy")
        == "postgres://u:p%40ss@db.local/proxy"
    )
    assert database_url("mysql", "root", "", "", "proxy") == "mysql://root@127.0.0.1/proxy"
    assert database_url("sqlite", "", "", "", "proxy.db") == "sqlite:///proxy.db"
    with pytest.raises(CommandError):
        database_url("oracle", "", "", "", "x")


@pytest.mark.django_db
def test_load_prices_keeps_history_when_a_price_changes(tmp_path):
    from usage.models import ModelPrice
    from usage.pricing import price_book

    before = ModelPrice.objects.filter(model="gpt-4o-mini").get()
    changed = tmp_path / "prices.csv"
    changed.write_text(
        "model,input_per_1m,cached_input_per_1m,output_per_1m,mode\n"
        "gpt-4o-mini,0.2,0.1,0.8,chat\nbrand-new-model,1,,2,chat\n"
    )
    out = io.StringIO()
    call_command("load_prices", str(changed), stdout=out)

    rows = list(ModelPrice.objects.filter(model="gpt-4o-mini").order_by("effective_from"))
    assert "prices from prices.csv: 1 new, 1 changed" in out.getvalue()
    assert [r.input_per_1m for r in rows] == [before.input_per_1m, Decimal("0.2")]
    book = price_book()
    assert (
        book.price("gpt-4o-mini", before.effective_from).rate("input_per_1m") == before.input_per_1m
    )
    assert book.price("gpt-4o-mini", rows[1].effective_from).rate("input_per_1m") == Decimal("0.2")
    assert book.price("brand-new-model", rows[0].effective_from) is not None


@pytest.mark.parametrize(
    "args,says",
    [
        (["create_api_key", "bob", "--budget", "abc"], "--budget: not an amount in USD: 'abc'"),
        (["create_api_key", "bob", "--expires", "2026-02-30T00:00:00"], "not a real date"),
        (["create_api_key", "bob", "--expires", "2001-01-01T00:00:00Z"], "is in the past"),
        (["create_api_key"], "the following arguments are required: username"),
        (["reprice", "--from", "2025-13-01"], "--from: not a real date"),
        (["invite_user", "bob", "--email", "nope"], "--email: not an email address"),
        (["prune_usage", "--older-than", "x"], "unrecognized arguments"),
    ],
)
def test_bad_input_on_the_command_line_is_one_line(args, says, tmp_path):
    import subprocess
    import sys

    from tests.servers import ROOT

    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (1, 2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr
