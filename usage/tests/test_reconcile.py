"""manage.py reconcile_usage end to end: requests through the proxy to the fake upstream,
then the proxy's records held against the fake's own bill, read from its organization Usage
and Costs API with the admin key."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import urllib.request
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from fakeopenai.org_api import DEFAULT_ADMIN_KEY
from relay.org_usage import OpenAIUsage
from tests.e2e import records_for
from tests.servers import ROOT, database_url, free_port
from usage.models import ReconciliationRow, ReconciliationRun, UsageRecord
from usage.reconciliation import ProxyUsage, proxy_usage_by_day_model, reconciliation_rows

MESSAGES = [{"role": "user", "content": "Say hello to the accountants."}]


@pytest.fixture
def reconcilable(e2e, settings):
    """The test process reads the fake's organization API as the command would in production."""
    settings.OPENAI_BASE_URL = e2e.upstream.url
    settings.OPENAI_ADMIN_KEY = DEFAULT_ADMIN_KEY
    return e2e


def _adjust(e2e, **shift: object) -> None:
    request = urllib.request.Request(
        e2e.upstream.url.removesuffix("/v1") + "/_fake/org/adjust",
        data=json.dumps(shift).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _reconcile(*args: str) -> str:
    out = io.StringIO()
    call_command("reconcile_usage", *args, stdout=out)
    return out.getvalue()


def _traffic(e2e) -> None:
    secret = e2e.key()
    client = e2e.client(secret)
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=50
        )
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=50)
    client.embeddings.create(model="text-embedding-3-small", input="ledger lines")
    records_for(secret, 4)


def test_traffic_through_the_proxy_reconciles_with_zero_drift(reconcilable):
    _traffic(reconcilable)
    today = timezone.now().date()
    # Ten days: more buckets than one page of the organization API holds (7).
    output = _reconcile("--from", str(today - dt.timedelta(days=9)))

    run = ReconciliationRun.objects.get()
    assert run.status == "done" and run.error == "" and run.finished_at is not None
    rows = {row.model: row for row in run.rows.all()}
    # Compared on the names OpenAI reports: the snapshots the aliases resolved to.
    assert set(rows) == {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "text-embedding-3-small"}
    mini = rows["gpt-4o-mini-2024-07-18"]
    assert mini.day == today and mini.proxy_requests == mini.openai_requests == 2
    assert mini.proxy_input_tokens == mini.openai_input_tokens > 0
    assert mini.proxy_output_tokens == mini.openai_output_tokens > 0
    assert mini.proxy_usd == mini.openai_usd > 0
    assert not any(row.drift for row in rows.values())
    assert "0 of 3 day × model rows differ." in output
    assert "gpt-4o-2024-08-06" in output and "DRIFT" not in output


def test_a_shifted_bill_is_reported_per_day_and_model(reconcilable):
    _traffic(reconcilable)
    today = timezone.now().date()
    three_days_ago = today - dt.timedelta(days=3)
    # OpenAI billed one more request today than the proxy recorded, and on a day the proxy
    # saw nothing, a model it never relayed (the key used outside the proxy).
    _adjust(reconcilable, model="gpt-4o-mini", requests=1, input_tokens=40, output_tokens=10)
    _adjust(reconcilable, model="gpt-4.1-nano", day=str(three_days_ago), requests=3, usd="0.25")

    output = _reconcile("--from", str(today - dt.timedelta(days=9)), "--to", str(today))

    drifting = ReconciliationRow.objects.filter(drift=True)
    assert {(row.day, row.model) for row in drifting} == {
        (today, "gpt-4o-mini-2024-07-18"),
        (three_days_ago, "gpt-4.1-nano"),
    }
    mini = drifting.get(model="gpt-4o-mini-2024-07-18")
    assert (mini.requests_difference, mini.input_tokens_difference) == (1, 40)
    assert mini.output_tokens_difference == 10
    # The fake prices what it added at its own rates: 40 × $0.15 + 10 × $0.60 per 1M.
    assert mini.usd_difference == Decimal("0.000012")
    nano = drifting.get(model="gpt-4.1-nano")
    assert (nano.proxy_requests, nano.openai_requests, nano.usd_difference) == (
        0,
        3,
        Decimal("0.25"),
    )
    assert "2 of 4 day × model rows differ" in output
    assert output.count("DRIFT") == 2
    drift_line = next(line for line in output.splitlines() if "gpt-4.1-nano" in line)
    assert str(three_days_ago) in drift_line and "0.00 / 0.25 / +0.25" in drift_line


def test_the_staff_dashboard_shows_the_latest_runs_drift(
    reconcilable, client, staff, django_user_model
):
    _traffic(reconcilable)
    _adjust(reconcilable, model="gpt-4o", requests=2, input_tokens=7)
    today = timezone.now().date()
    _reconcile("--from", str(today))

    client.force_login(staff)
    page = client.get("/dashboard/").content.decode()
    assert 'id="reconciliation"' in page
    assert "gpt-4o-2024-08-06" in page and "+2" in page
    assert 'id="reconciliation-drift"' in page  # the chart, server-rendered
    client.force_login(django_user_model.objects.get(username="alice"))
    assert 'id="reconciliation"' not in client.get("/dashboard/").content.decode()


def test_refused_admin_key_fails_in_one_line_and_the_run_says_why(reconcilable, settings):
    settings.OPENAI_ADMIN_KEY = "sk-not-the-admin-key"
    with pytest.raises(CommandError) as refused:
        _reconcile("--from", str(timezone.now().date()))
    assert "refused OPENAI_ADMIN_KEY (401)" in str(refused.value)
    assert "\n" not in str(refused.value)
    run = ReconciliationRun.objects.get()
    assert run.status == "failed" and "401" in run.error and not run.rows.exists()


def test_unreachable_openai_fails_in_one_line(reconcilable, settings):
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(CommandError, match=r"could not reach OpenAI at http://127\.0\.0\.1:"):
        _reconcile("--from", str(timezone.now().date()))


@pytest.mark.parametrize(
    ("arguments", "admin_key", "message"),
    [
        ([], DEFAULT_ADMIN_KEY, "--from YYYY-MM-DD is required"),
        (["--from", "2025-13-01"], DEFAULT_ADMIN_KEY, "--from: not a date (YYYY-MM-DD)"),
        (["--from", "2025-03-02", "--to", "2025-03-01"], DEFAULT_ADMIN_KEY, "is before --from"),
        (["--from", "2025-03-01"], "", "OPENAI_ADMIN_KEY is not set"),
    ],
)
def test_the_command_run_as_operators_run_it_fails_in_one_line(
    transactional_db, arguments, admin_key, message
):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url(),
        "OPENAI_ADMIN_KEY": admin_key,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "SECRET_KEY": "test-secret-never-used-outside-the-tests-0123456789abcdef",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "reconcile_usage", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_proxy_counts_what_openai_bills_under_the_name_openai_reports(
    make_record, alice_key, at
):
    api_key, _ = alice_key
    make_record(api_key, created_at=at(1, 23), cost="0.002")
    make_record(api_key, created_at=at(1, 1), response_model="", model="gpt-4.1-nano")
    # A client that left mid-answer: OpenAI billed the input it read.
    make_record(api_key, created_at=at(1), status_code=499, client_disconnected=True)
    # Refused before or by OpenAI, in flight, or on another day: not billed here.
    make_record(api_key, created_at=at(1), status_code=429, prompt_tokens=0, completion_tokens=0)
    in_flight = make_record(api_key, created_at=at(1))
    UsageRecord.objects.filter(pk=in_flight.pk).update(state="pending")
    make_record(api_key, created_at=at(0, 0))

    usage = proxy_usage_by_day_model(start=at(1).date(), end=at(1).date())

    assert set(usage) == {
        (at(1).date(), "gpt-4o-mini-2024-07-18"),
        (at(1).date(), "gpt-4.1-nano"),
    }
    mini = usage[(at(1).date(), "gpt-4o-mini-2024-07-18")]
    assert (mini.requests, mini.input_tokens, mini.output_tokens) == (2, 200, 40)
    assert mini.usd == Decimal("0.003")


def test_usd_drifts_from_a_micro_dollar(db):
    day = dt.date(2026, 3, 1)
    proxy = {(day, "a"): ProxyUsage(1, 10, 1, Decimal("0.0000100")), (day, "b"): ProxyUsage(1)}
    openai_side = {
        (day, "a"): OpenAIUsage(1, 10, 1, Decimal("0.0000104")),
        (day, "b"): OpenAIUsage(1, 0, 0, Decimal("0.000001")),
    }
    rows = {row.model: row for row in reconciliation_rows(proxy=proxy, openai=openai_side)}
    assert not rows["a"].drift and rows["a"].usd_difference == Decimal("0.0000004")
    assert rows["b"].drift


def test_runs_are_read_only_in_the_admin(reconcilable, client, staff):
    _traffic(reconcilable)
    _reconcile("--from", str(timezone.now().date()))
    run = ReconciliationRun.objects.get()
    client.force_login(staff)
    assert client.get("/admin/usage/reconciliationrun/").status_code == 200
    page = client.get(f"/admin/usage/reconciliationrun/{run.pk}/change/")
    assert page.status_code == 200 and "gpt-4o-mini-2024-07-18" in page.content.decode()
    assert client.get("/admin/usage/reconciliationrun/add/").status_code == 403
    assert client.post(f"/admin/usage/reconciliationrun/{run.pk}/delete/").status_code == 403
