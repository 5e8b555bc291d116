"""The hourly rollups the activity charts read: kept by every record write, and filled from
the records already kept by the migration that made them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from usage.models import UsageHourly, UsageLatency, latency_bucket

HOUR = dt.datetime(2026, 3, 4, 9, tzinfo=dt.UTC)
BEFORE = [("usage", "0012_partition_usage_by_month")]


def hourly_rows() -> list[tuple]:
    return sorted(
        UsageHourly.objects.values_list(
            "hour", "model", "requests", "errors", "cost_usd", "unpriced_requests"
        )
    )


def latency_rows() -> list[tuple]:
    return sorted(UsageLatency.objects.values_list("hour", "bucket", "requests"))


def test_each_record_adds_to_its_hour_and_latency_bucket(alice_key, make_record):
    key, _ = alice_key
    make_record(key, created_at=HOUR + dt.timedelta(minutes=5), latency_ms=120, cost="0.25")
    make_record(key, created_at=HOUR + dt.timedelta(minutes=59), latency_ms=140, cost="0.5")
    make_record(key, created_at=HOUR + dt.timedelta(hours=1), status_code=500, cost=None)
    model = "gpt-4o-mini-2024-07-18"
    assert hourly_rows() == [
        (HOUR, model, 2, 0, Decimal("0.75"), 0),
        (HOUR + dt.timedelta(hours=1), model, 1, 1, Decimal(0), 0),
    ]
    assert latency_rows() == [
        (HOUR, latency_bucket(150), 2),  # 120 and 140 ms: the 100–150 ms bucket
        (HOUR + dt.timedelta(hours=1), latency_bucket(250), 1),
    ]


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_them_from_the_records_kept():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE)
        apps = executor.loader.project_state(BEFORE).apps
        user = apps.get_model("auth", "User").objects.create(username="old")
        Record = apps.get_model("usage", "UsageRecord")
        common = {"user": user, "key_prefix": "sk-proxy-old", "endpoint": "chat/completions"}
        for minute, latency, status, cost in (
            (1, 90, 200, Decimal("0.1")),
            (2, 95, 200, None),
            (3, None, 429, None),
        ):
            Record.objects.create(
                created_at=HOUR + dt.timedelta(minutes=minute), model="gpt-4o",
                response_model="", status_code=status, latency_ms=latency, cost_usd=cost,
                **common,
            )  # fmt: skip
        # A reservation in flight is not in any rollup yet.
        Record.objects.create(
            created_at=HOUR, model="gpt-4o", status_code=0, state="pending", **common
        )
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

        assert hourly_rows() == [(HOUR, "gpt-4o", 3, 1, Decimal("0.1"), 1)]
        assert latency_rows() == [(HOUR, -1, 1), (HOUR, latency_bucket(100), 2)]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_everyones_activity_is_summed_in_two_queries_however_many_days(
    alice_key, bob_key, make_record
):
    from django.core.cache import cache
    from django.test.utils import CaptureQueriesContext

    from usage.selectors import usage_activity

    cache.clear()
    start = HOUR.date()
    for day in range(10):
        at = HOUR + dt.timedelta(days=day)
        make_record(alice_key[0], created_at=at, latency_ms=90, cost="0.25")
        make_record(bob_key[0], created_at=at + dt.timedelta(minutes=1), latency_ms=900, cost="1")
        make_record(bob_key[0], created_at=at + dt.timedelta(hours=2), status_code=500, cost=None)
    end, today = start + dt.timedelta(days=9), start + dt.timedelta(days=30)
    with CaptureQueriesContext(connection) as queries:
        days = usage_activity(user_id=None, start=start, end=end, today=today, hourly=False)
    assert len([q for q in queries if "usage_usage" in q["sql"]]) == 2  # hourly and latency
    assert [(d.requests, d.errors, d.cost_usd) for d in days] == [(3, 1, Decimal("1.25"))] * 10
    # Three requests: 90 ms, 900 ms and the 500's (250 ms): the p50 is the 250's bucket edge.
    assert {(d.p50_ms, d.p95_ms) for d in days} == {(300, 1000)}
    hours = usage_activity(
        user_id=bob_key[0].user_id, start=start, end=start, today=today, hourly=True
    )
    assert [(h.requests, h.errors) for h in hours if h.requests] == [(1, 0), (1, 1)]
    # Closed days are read again from the cache, not the database.
    with CaptureQueriesContext(connection) as queries:
        again = usage_activity(user_id=None, start=start, end=end, today=today, hourly=False)
    assert not [q for q in queries if "usage_usage" in q["sql"]]
    assert [d.p95_ms for d in again] == [d.p95_ms for d in days]
