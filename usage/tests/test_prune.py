"""prune_usage: old records and bodies go, recent ones stay, the per-day totals do not move."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from usage.models import UsageDaily, UsageRecord

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
BODY = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def prune(*args: str) -> str:
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("prune_usage", *args, stdout=out)
    return out.getvalue()


def rollup_totals() -> dict:
    return UsageDaily.objects.aggregate(
        requests=Sum("requests"),
        cost=Sum("cost_usd"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
    )


@pytest.fixture
def history(alice_key, make_record):
    """Alice's records: 5 from 200 days ago, 3 from 40 days ago, 2 from yesterday; all with
    bodies."""
    api_key, _ = alice_key

    def made(days_ago: int, n: int) -> list[UsageRecord]:
        return [
            make_record(
                api_key,
                created_at=NOW - dt.timedelta(days=days_ago, minutes=i),
                request_body=BODY,
                response_body='{"choices": []}',
            )
            for i in range(n)
        ]

    return {"ancient": made(200, 5), "older": made(40, 3), "recent": made(1, 2)}


def test_old_records_and_bodies_go_recent_ones_stay_rollups_unchanged(history, settings):
    settings.USAGE_RETENTION_DAYS = 90
    settings.USAGE_BODY_RETENTION_DAYS = 30
    before = rollup_totals()
    assert before["requests"] == 10

    with CaptureQueriesContext(connection) as queries:
        out = prune("--batch-size", "2")

    # Five old records in batches of two: three short DELETEs, not one long one.
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3
    assert "deleted 5 usage records" in out and "blanked the bodies of 3 usage records" in out
    left = {r.id: r for r in UsageRecord.objects.all()}
    assert not any(r.id in left for r in history["ancient"])
    for record in history["older"]:
        kept = left[record.id]
        assert kept.request_body == "" and kept.response_body == ""
        assert kept.cost_usd == Decimal("0.001") and kept.prompt_tokens == 100  # only bodies go
    for record in history["recent"]:
        assert left[record.id].request_body == BODY
    # The per-day totals, pruned days included, are what they were.
    assert rollup_totals() == before


def test_days_option_overrides_the_setting_and_zero_keeps_everything(history, settings):
    settings.USAGE_RETENTION_DAYS = 0
    settings.USAGE_BODY_RETENTION_DAYS = 0

    out = prune()
    assert "kept forever" in out and UsageRecord.objects.count() == 10
    assert UsageRecord.objects.filter(request_body="").count() == 0

    out = prune("--days", "30")
    assert "deleted 8 usage records" in out
    assert set(UsageRecord.objects.values_list("id", flat=True)) == {
        r.id for r in history["recent"]
    }
    assert UsageRecord.objects.filter(request_body=BODY).count() == 2


def test_dry_run_only_counts(history, settings):
    settings.USAGE_RETENTION_DAYS = 90
    settings.USAGE_BODY_RETENTION_DAYS = 30

    out = prune("--dry-run")

    assert "would delete 5 usage records" in out
    assert "would blank the bodies of 3 usage records" in out
    assert UsageRecord.objects.count() == 10
    assert UsageRecord.objects.filter(request_body=BODY).count() == 10


def test_records_written_after_the_cutoff_are_safe_from_a_later_run(
    alice_key, make_record, settings
):
    settings.USAGE_RETENTION_DAYS = 90
    api_key, _ = alice_key
    with time_machine.travel(NOW - dt.timedelta(days=89), tick=False):
        kept = make_record(api_key, created_at=None)

    prune()

    assert UsageRecord.objects.filter(id=kept.id).exists()
