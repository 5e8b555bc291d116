"""The usage table by month on PostgreSQL: the migration keeps every row, records land in
their month's partition (or DEFAULT, never an error), and retention drops whole months."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum

from keys.selectors import key_info_for_secret
from keys.services import key_issue, quota_reserve
from tests.factories import request_record
from usage.models import RecordState, UsageDaily, UsageRecord
from usage.partitions import DEFAULT_PARTITION, partitions_ensure
from usage.services import usage_records_write

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="partitions are PostgreSQL's (SQLite: one table)"
    ),
    pytest.mark.usefixtures("fresh_key_caches"),
]

UTC = dt.UTC
BEFORE = [("usage", "0011_record_team_ledger")]


def at(year: int, month: int, day: int = 10, hour: int = 12) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=UTC)


def partition_names() -> set[str]:
    """What pg_inherits says the usage table is made of."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'usage_usagerecord'::regclass"
        )
        return {name for (name,) in cursor.fetchall()}


def partition_of(record_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM usage_usagerecord WHERE id = %s", [record_id]
        )
        return cursor.fetchone()[0]


def raw_records() -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM usage_usagerecord ORDER BY id")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _migrate(targets: list[tuple[str, str]]) -> None:
    MigrationExecutor(connection).migrate(targets)


def _latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


# --- The migration ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_every_row_and_the_ids_go_on():
    try:
        _migrate(BEFORE)
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'usage_usagerecord'")
            assert cursor.fetchone()[0] == "r"  # a plain table before
        apps = MigrationExecutor(connection).loader.project_state(BEFORE).apps
        User = apps.get_model("auth", "User")
        Key = apps.get_model("keys", "ApiKey")
        Record = apps.get_model("usage", "UsageRecord")
        dora = User.objects.create(username="dora")
        key = Key.objects.create(user=dora, prefix="sk-proxy-dora01", key_hash="d" * 64)
        common = {
            "user": dora,
            "api_key": key,
            "key_prefix": key.prefix,
            "endpoint": "chat/completions",
        }
        months = [at(2025, 11), at(2025, 12, 31, 23), at(2026, 1, 1, 0), at(2026, 3)]
        for i, moment in enumerate(months):
            Record.objects.create(
                created_at=moment,
                status_code=200,
                model="gpt-4o-mini",
                prompt_tokens=10 + i,
                cost_usd=Decimal("0.000123456789"),
                uid=uuid.uuid4(),
                request_body='{"hi": 1}',
                tool_calls={"web_search": 1},
                **common,
            )
        # A reservation in flight and one held by a batch: pending rows, as the relay writes them.
        Record.objects.create(
            created_at=at(2026, 3, 2), status_code=0, state="pending", process="relay-1",
            reserved_usd=Decimal("0.5"), reserved_tokens=900, key_ledger_id=7, uid=uuid.uuid4(),
            estimated=True, **common,
        )  # fmt: skip
        Record.objects.create(
            created_at=at(2026, 2, 2), status_code=0, state="pending", process="batch",
            reserved_usd=Decimal("2"), uid=uuid.uuid4(), **common,
        )  # fmt: skip
        # A row a process of the previous release wrote without naming the newer columns.
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO usage_usagerecord (created_at, user_id, key_prefix, endpoint, model,"
                " response_model, service_tier, status_code, error_code, stream, prompt_tokens,"
                " cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens,"
                " audio_input_tokens, audio_output_tokens, estimated, client_disconnected,"
                " upstream_request_id, response_id, request_body, response_body) VALUES"
                " (%s, %s, 'sk-proxy-old', 'embeddings', 'm', '', '', 200, '', false, 1, 0, 0, 0,"
                " 0, 0, 0, false, false, '', '', '', '')",
                [at(2026, 2, 20), dora.pk],
            )
        before = raw_records()
        assert len(before) == 7

        _migrate(_latest())

        assert raw_records() == before
        names = partition_names()
        assert {"usage_usagerecord_y2025m11", "usage_usagerecord_y2025m12",
                "usage_usagerecord_y2026m01", "usage_usagerecord_y2026m02",
                "usage_usagerecord_y2026m03", DEFAULT_PARTITION} <= names  # fmt: skip
        by_id = {row["id"]: row for row in before}
        for row_id, row in by_id.items():
            assert partition_of(row_id) == f"usage_usagerecord_y{row['created_at']:%Ym%m}"
        # The pending rows are still there to be ended, by the reaper's query too.
        pending = UsageRecord.objects.filter(state=RecordState.PENDING).order_by("pk")
        assert [(r.process, r.reserved_usd) for r in pending] == [
            ("relay-1", Decimal("0.5")),
            ("batch", Decimal("2")),
        ]
        # New records get new ids, after the old ones.
        fresh = UsageRecord.objects.create(
            created_at=at(2026, 3, 5), user_id=by_id[min(by_id)]["user_id"], key_prefix="sk-x",
            endpoint="chat/completions", status_code=200,
        )  # fmt: skip
        assert fresh.pk == max(by_id) + 1
        assert partition_of(fresh.pk) == "usage_usagerecord_y2026m03"

        # Backwards: one plain table again, the same rows.
        _migrate(BEFORE)
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'usage_usagerecord'")
            assert cursor.fetchone()[0] == "r"
        assert [r for r in raw_records() if r["id"] != fresh.pk] == before
    finally:
        _migrate(_latest())


# --- Where records land -----------------------------------------------------------------------


def spend(created_at: dt.datetime) -> UsageRecord:
    """A request billed as the relay bills it: the pending row written with its reservation,
    then completed."""
    _, secret = key_issue(username=f"u{uuid.uuid4().hex[:8]}", budget_usd=Decimal(5))
    key = key_info_for_secret(secret)
    record = request_record(key, created_at=created_at)
    quota_reserve(key=key, cost=Decimal("0.01"), tokens=100, now=created_at, record=record)
    record.status_code = 200
    record.cost_usd = Decimal("0.002")
    record.estimated = False
    usage_records_write(records=[record])
    return record


@pytest.mark.django_db
def test_a_record_lands_in_its_month_and_one_without_a_partition_in_default():
    partitions_ensure(months=[at(2027, 5)])
    in_may = spend(at(2027, 5, 31, 23))
    assert partition_of(in_may.pk) == "usage_usagerecord_y2027m05"

    far = spend(at(2033, 4, 1, 0))  # no partition for April 2033: DEFAULT, no error
    assert partition_of(far.pk) == DEFAULT_PARTITION
    assert UsageRecord.objects.get(pk=far.pk).state == RecordState.DONE

    # Making that month later moves its rows out of DEFAULT, ids and all.
    assert partitions_ensure(months=[at(2033, 4)]) == ["usage_usagerecord_y2033m04"]
    assert partition_of(far.pk) == "usage_usagerecord_y2033m04"
    assert UsageRecord.objects.get(pk=far.pk).cost_usd == Decimal("0.002")
    assert partitions_ensure(months=[at(2033, 4)]) == []  # made once


@pytest.mark.django_db
def test_a_write_heard_as_failed_is_found_again_by_uid_not_inserted_twice():
    record = spend(at(2027, 5, 3))
    again = UsageRecord(
        created_at=record.created_at, user_id=record.user_id, api_key_id=record.api_key_id,
        key_prefix=record.key_prefix, endpoint=record.endpoint, status_code=200,
        uid=record.uid, cost_usd=Decimal("0.002"),
    )  # fmt: skip
    usage_records_write(records=[again])
    assert again.pk == record.pk
    assert UsageRecord.objects.filter(uid=record.uid).count() == 1


@pytest.mark.django_db
def test_the_next_months_partitions_are_made_ahead():
    with time_machine.travel(at(2029, 11, 20), tick=False):
        made = partitions_ensure()
    assert made == [
        "usage_usagerecord_y2029m11",
        "usage_usagerecord_y2029m12",
        "usage_usagerecord_y2030m01",
        "usage_usagerecord_y2030m02",
    ]
    out = io.StringIO()
    call_command("usage_partitions", stdout=out)
    assert "usage_usagerecord_y2030m02  2030-02-01 to 2030-03-01" in out.getvalue()


# --- Retention drops whole months -------------------------------------------------------------

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_prune_drops_whole_old_months_keeps_pending_rows_and_the_totals(
    alice_key, make_record, settings
):
    settings.USAGE_RETENTION_DAYS = 90  # cutoff 2026-03-17 12:00
    partitions_ensure(months=[at(2026, m) for m in range(1, 7)])
    api_key, _ = alice_key
    for moment in (
        at(2026, 1, 3),
        at(2026, 1, 30),
        at(2026, 2, 5),
        at(2026, 3, 1),
        at(2026, 3, 20),
        at(2026, 6, 1),
    ):
        make_record(api_key, created_at=moment)
    held = UsageRecord.objects.create(
        created_at=at(2026, 2, 7), user=api_key.user, api_key=api_key, key_prefix=api_key.prefix,
        endpoint="batches", status_code=0, state=RecordState.PENDING, process="batch",
        reserved_usd=Decimal("1"),
    )  # fmt: skip
    totals = UsageDaily.objects.aggregate(requests=Sum("requests"), cost=Sum("cost_usd"))

    # The test's own inserts are in this transaction (prune runs in its own): their deferred
    # foreign key checks must have run before a table they touched can be dropped.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("prune_usage", "--dry-run", stdout=out)
        assert "would drop the partition usage_usagerecord_y2026m01" in out.getvalue()
        assert "would keep the partition usage_usagerecord_y2026m02 (pending)" in out.getvalue()
        assert "usage_usagerecord_y2026m01" in partition_names()
        call_command("prune_usage", stdout=out)

    text = out.getvalue()
    assert "dropped the partition usage_usagerecord_y2026m01 (2 records)" in text
    assert "kept the partition usage_usagerecord_y2026m02: it holds a pending record" in text
    assert "deleted 4 usage records" in text  # 2 by the partition, Feb 5 and Mar 1 one by one
    names = partition_names()
    assert "usage_usagerecord_y2026m01" not in names
    assert {"usage_usagerecord_y2026m02", "usage_usagerecord_y2026m03"} <= names
    assert sorted(UsageRecord.objects.values_list("created_at", flat=True)) == [
        at(2026, 2, 7), at(2026, 3, 20), at(2026, 6, 1),
    ]  # fmt: skip
    assert UsageRecord.objects.get(pk=held.pk).state == RecordState.PENDING
    assert UsageDaily.objects.aggregate(requests=Sum("requests"), cost=Sum("cost_usd")) == totals
