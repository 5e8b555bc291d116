"""The quota ledger bills the right tenant, to the picodollar, on SQLite and PostgreSQL alike,
and data the earlier schema wrote reads the same after the exact-money migrations."""

from __future__ import annotations

import datetime as dt
from decimal import Context, Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum

from keys import selectors, services
from keys.models import EPOCH, QuotaLedger, period_start
from keys.selectors import KeyInfo, key_info_for_secret
from keys.services import QuotaExceeded, key_issue, quota_reserve, user_limit_set
from tests.factories import request_record
from usage.models import RecordState, UsageDaily, UsageRecord
from usage.services import usage_records_write

pytestmark = pytest.mark.usefixtures("fresh_key_caches")

NOW = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC)
PICO = Decimal("0.000000000001")
OLD_SCHEMA = [("keys", "0003_quota_reserve_function"), ("usage", "0002_load_shipped_prices")]


def issue(username: str, **limits: object) -> tuple[KeyInfo, str]:
    _, secret = key_issue(username=username, **limits)
    return key_info_for_secret(secret), secret


def pending(key: KeyInfo, *, now: dt.datetime = NOW, estimate: Decimal = Decimal("0.0001")):
    return request_record(key, created_at=now, cost_usd=estimate)


def reserve(key: KeyInfo, cost: Decimal, *, now: dt.datetime = NOW, tokens: int = 100):
    record = pending(key, now=now)
    quota_reserve(key=key, cost=cost, tokens=tokens, now=now, record=record)
    return record


def finished(record: UsageRecord, cost: Decimal) -> UsageRecord:
    record.status_code = 200
    record.response_model = "gpt-4o-mini-2024-07-18"
    record.completion_tokens = 5
    record.cost_usd = cost
    record.estimated = False
    return record


def ledgers_of(key: KeyInfo, now: dt.datetime = NOW) -> tuple[QuotaLedger, QuotaLedger]:
    """The key's and its user's ledger rows of the periods holding `now`."""
    k, u = key.key_limits.period, key.user_limits.period
    return (
        QuotaLedger.objects.get(api_key_id=key.id, period=k, period_start=period_start(k, now)),
        QuotaLedger.objects.get(user_id=key.user_id, period=u, period_start=period_start(u, now)),
    )


def counters(ledger: QuotaLedger) -> tuple[Decimal, Decimal, int]:
    ledger.refresh_from_db()
    return ledger.spent_usd, ledger.reserved_usd, ledger.requests


class CallerGaveUp(Exception):
    pass


# --- The right tenant -------------------------------------------------------------------------
#
# Before the fix, the first request of a period that was refused created its ledger row inside
# the reservation's transaction and cached the row's id before the transaction rolled back. On
# SQLite a rolled-back row's id is handed out again (sqlite_sequence rolls back with it), so the
# next tenant's first request created its ledger row with that same id, and the refused key's
# next request was reserved on the other tenant's row: the UPDATE matched on the id alone.
# Every case below failed then on SQLite (B's row got A's reservation; A's own row had none;
# checked against the code of 0496804). Now ledger rows are committed before the reservation's
# transaction, ids are cached only once their row is committed, and the UPDATE also checks the
# owner and period. At top level any one of the three keeps these passing; inside a caller's
# transaction that rolls back (the "in-atomic" cases) the rows roll back with it, so there the
# commit-only cache or the owner check must hold. PostgreSQL never reuses a sequence value, so
# there the cases passed on the old code too and guard the owner check against regressing.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("period", ["total", "day"])
@pytest.mark.parametrize("refused_by", ["key", "user"])
@pytest.mark.parametrize("in_callers_transaction", [False, True], ids=["top-level", "in-atomic"])
def test_a_refused_first_request_of_a_period_never_bills_another_tenant_later(
    period, refused_by, in_callers_transaction
):
    limits = {"budget_usd": Decimal("0.05"), "period": period}
    if refused_by == "key":
        a, _ = issue("tenant-a", **limits)
    else:
        a, secret = issue("tenant-a")
        user_limit_set(user=get_user_model().objects.get(pk=a.user_id), **limits)
        selectors._cache.clear()
        a = key_info_for_secret(secret)
    b, _ = issue("tenant-b")

    today = NOW
    if period == "day":
        # A used the previous day normally; what is refused is its first request of today.
        yesterday = NOW - dt.timedelta(days=1)
        usage_records_write(
            records=[finished(reserve(a, Decimal("0.01"), now=yesterday), Decimal("0.01"))]
        )

    rolled_back_ids: set[int] = set()
    if in_callers_transaction:
        committed = set(QuotaLedger.objects.values_list("pk", flat=True))
        with pytest.raises(CallerGaveUp), transaction.atomic():
            with pytest.raises(QuotaExceeded):
                reserve(a, Decimal("0.08"), now=today)
            rolled_back_ids = set(QuotaLedger.objects.values_list("pk", flat=True)) - committed
            raise CallerGaveUp
        assert rolled_back_ids  # A's rows of today were made, then rolled back
    else:
        with pytest.raises(QuotaExceeded):
            reserve(a, Decimal("0.08"), now=today)

    b_record = reserve(b, Decimal("0.02"), now=today)
    usage_records_write(records=[finished(b_record, Decimal("0.015"))])
    b_key_ledger, b_user_ledger = ledgers_of(b, today)
    if rolled_back_ids and connection.vendor == "sqlite":
        # The hazard is live on this database: B's new rows took the ids of A's rolled-back
        # ones, so a cached id of those rows would point at B.
        assert rolled_back_ids <= {b_key_ledger.pk, b_user_ledger.pk}

    a_record = reserve(a, Decimal("0.01"), now=today)

    # A's ledger of the "total" period also carries the request of the day before.
    before = (Decimal("0.01"), 1) if period == "day" else (Decimal(0), 0)

    def a_expects(ledger: QuotaLedger, spent: Decimal, reserved: Decimal) -> tuple:
        carried = before if ledger.period == "total" else (Decimal(0), 0)
        return spent + carried[0], reserved, 1 + carried[1]

    assert counters(b_key_ledger) == (Decimal("0.015"), 0, 1)
    assert counters(b_user_ledger) == (Decimal("0.015"), 0, 1)
    a_key_ledger, a_user_ledger = ledgers_of(a, today)
    assert counters(a_key_ledger) == a_expects(a_key_ledger, Decimal(0), Decimal("0.01"))
    assert counters(a_user_ledger) == a_expects(a_user_ledger, Decimal(0), Decimal("0.01"))
    a_record.refresh_from_db()
    assert (a_record.key_ledger_id, a_record.user_ledger_id) == (a_key_ledger.pk, a_user_ledger.pk)

    usage_records_write(records=[finished(a_record, Decimal("0.01"))])
    assert counters(a_key_ledger) == a_expects(a_key_ledger, Decimal("0.01"), Decimal(0))
    assert counters(a_user_ledger) == a_expects(a_user_ledger, Decimal("0.01"), Decimal(0))
    assert counters(b_key_ledger) == (Decimal("0.015"), 0, 1)
    assert counters(b_user_ledger) == (Decimal("0.015"), 0, 1)


@pytest.mark.django_db(transaction=True)
def test_a_cached_id_of_another_tenants_row_misses_and_never_bills_it():
    # Transactional: on PostgreSQL the reservation takes the one-statement path (migration
    # 0005's function), which must check the owner as the portable UPDATE does.
    a, _ = issue("tenant-a")
    b, _ = issue("tenant-b")
    usage_records_write(records=[finished(reserve(b, Decimal("0.02")), Decimal("0.015"))])
    b_key_ledger, b_user_ledger = ledgers_of(b)
    # However a wrong id got there (a pruned row's id reused, a restored backup), A's cache
    # names B's rows.
    services._ledger_ids[("key", a.id, "total", EPOCH)] = b_key_ledger.pk
    services._ledger_ids[("user", a.user_id, "total", EPOCH)] = b_user_ledger.pk

    a_record = reserve(a, Decimal("0.01"))

    assert counters(b_key_ledger) == (Decimal("0.015"), 0, 1)
    assert counters(b_user_ledger) == (Decimal("0.015"), 0, 1)
    a_key_ledger, a_user_ledger = ledgers_of(a)
    assert counters(a_key_ledger) == (0, Decimal("0.01"), 1)
    assert counters(a_user_ledger) == (0, Decimal("0.01"), 1)
    a_record.refresh_from_db()
    assert (a_record.key_ledger_id, a_record.user_ledger_id) == (a_key_ledger.pk, a_user_ledger.pk)


# --- To the picodollar ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_thousand_odd_costs_add_up_to_the_picodollar():
    key, secret = issue("carol", budget_usd=Decimal("5000000"))
    costs = [Decimal("0.000000123457") * i for i in range(1, 1001)]
    for i in (137, 500, 999):
        # 19 significant digits: no float holds this, so any float step would show.
        costs[i] = Decimal("1234567.123456789012")
    batch = []
    for i, cost in enumerate(costs):
        # Reserved a little more than it costs: the release must be exact too.
        record = reserve(key, cost + PICO * (i % 7 + 1), now=NOW - dt.timedelta(hours=i))
        batch.append(finished(record, cost))
        if len(batch) == 50:  # as the writer does: one transaction for many records
            usage_records_write(records=batch)
            batch = []
    usage_records_write(records=batch)

    total = sum(costs)
    key_ledger, user_ledger = ledgers_of(key)
    for ledger in (key_ledger, user_ledger):
        ledger.refresh_from_db()
        assert (ledger.spent_usd, ledger.reserved_usd, ledger.requests) == (total, 0, 1000)
        assert ledger.tokens == 1000 * (10 + 5)
    rollups = UsageDaily.objects.aggregate(cost=Sum("cost_usd"), requests=Sum("requests"))
    assert rollups == {"cost": total, "requests": 1000}
    assert UsageDaily.objects.count() > 40  # the records spread over 42 days
    assert UsageRecord.objects.aggregate(cost=Sum("cost_usd"))["cost"] == total
    report = selectors.key_usage_report(key=key_info_for_secret(secret), now=NOW)
    assert report["usage"]["key"]["spent_usd"] == str(total.quantize(Decimal("0.000001")))
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            for table, column in (
                ("keys_quotaledger", "spent_usd"),
                ("keys_quotaledger", "reserved_usd"),
                ("usage_usagedaily", "cost_usd"),
                ("usage_usagerecord", "cost_usd"),
                ("usage_usagerecord", "reserved_usd"),
            ):
                cursor.execute(f"SELECT DISTINCT typeof({column}) FROM {table}")
                assert cursor.fetchall() == [("integer",)], (table, column)


@pytest.mark.django_db(transaction=True)
def test_a_budget_is_spendable_to_its_last_picodollar_and_not_one_beyond():
    # In float, 0.1 + 0.2 > 0.3: a user with $0.30 who spent $0.10 would be refused $0.20.
    key, _ = issue("dora", budget_usd=Decimal("0.3"))
    usage_records_write(records=[finished(reserve(key, Decimal("0.1")), Decimal("0.1"))])
    usage_records_write(records=[finished(reserve(key, Decimal("0.2")), Decimal("0.2"))])

    with pytest.raises(QuotaExceeded):
        reserve(key, PICO)
    key_ledger, _ = ledgers_of(key)
    assert counters(key_ledger) == (Decimal("0.3"), 0, 2)


# --- MoneyField round trips -------------------------------------------------------------------

EXACT = [
    None,
    Decimal(0),
    PICO,
    -PICO,
    Decimal("0.1"),
    Decimal("1234567.123456789012"),
    Decimal("-1234567.123456789012"),
    # The largest amounts SQLite's 64-bit picodollars hold (PostgreSQL holds more).
    Decimal("9223372.036854775807"),
    Decimal("-9223372.036854775808"),
]


@pytest.fixture
def record_of(db):
    key, _ = issue("erin")

    def save(cost: Decimal | None) -> UsageRecord:
        record = finished(pending(key), cost)
        record.state = RecordState.DONE
        record.save()
        return UsageRecord.objects.get(pk=record.pk)

    return save


@pytest.mark.parametrize("value", EXACT, ids=str)
def test_money_reads_back_exactly_what_was_stored(record_of, value):
    record = record_of(value)

    assert record.cost_usd == value
    assert (record.cost_usd is None) == (value is None)
    # A lookup by amount (admin filters, reports) finds it.
    assert UsageRecord.objects.filter(pk=record.pk, cost_usd=value).exists()
    assert UsageRecord.objects.filter(pk=record.pk).aggregate(s=Sum("cost_usd"))["s"] == value


ROUNDED = [
    # More than twelve places: rounded half to even, the same on every database.
    (Decimal("0.0000000000005"), Decimal(0)),
    (Decimal("0.0000000000015"), Decimal("0.000000000002")),
    (Decimal("0.0000000000025"), Decimal("0.000000000002")),
    (Decimal("-0.0000000000025"), Decimal("-0.000000000002")),
    (Decimal("1.0000000000004999"), Decimal("1")),
    (Decimal("0.12345678901249"), Decimal("0.123456789012")),
]


@pytest.mark.parametrize(("value", "stored"), ROUNDED, ids=str)
def test_money_beyond_twelve_places_rounds_half_to_even_on_every_database(record_of, value, stored):
    assert record_of(value).cost_usd == stored
    # A lookup by the rounded amount finds it.
    assert UsageRecord.objects.filter(cost_usd=stored).count() == 1


def test_money_sqlite_cannot_hold_is_refused_not_changed(record_of):
    too_much = Decimal("9223372.036854775808")
    if connection.vendor == "sqlite":
        with pytest.raises(OverflowError):
            record_of(too_much)
    else:
        assert record_of(too_much).cost_usd == too_much


@pytest.mark.django_db(transaction=True)
def test_a_ledger_settled_past_what_sqlite_holds_is_refused_not_corrupted():
    # A single value past what SQLite holds overflows in to_units; a sum in
    # `spent_usd = spent_usd + %s` would quietly become a REAL, so the write is refused.
    key, secret = issue("frank")
    usage_records_write(records=[finished(reserve(key, Decimal("9000000")), Decimal("9000000"))])
    record = finished(reserve(key, Decimal("300000")), Decimal("300000"))
    try:
        usage_records_write(records=[record])
    except Exception:  # noqa: BLE001 (refusing the write is the right outcome)
        pass
    # PostgreSQL holds $9.3M; SQLite must have refused the write and kept $9M.
    expected = Decimal("9000000") if connection.vendor == "sqlite" else Decimal("9300000")
    key_ledger, _ = ledgers_of(key)
    key_ledger.refresh_from_db()
    assert key_ledger.spent_usd == expected
    report = selectors.key_usage_report(key=key_info_for_secret(secret), now=NOW)
    assert report["usage"]["key"]["spent_usd"] == f"{expected}.00"


# --- Data the earlier schema wrote ------------------------------------------------------------


def _migrate(targets: list[tuple[str, str]]) -> None:
    MigrationExecutor(connection).migrate(targets)


def _old_key_issue(username: str, budget_usd: Decimal | None) -> tuple[object, str]:
    """A key as the earlier schema's code made it (its historical model: today's model has
    columns that schema lacks)."""
    import secrets

    from django.conf import settings

    from keys.models import key_hash

    apps = MigrationExecutor(connection).loader.project_state(OLD_SCHEMA).apps
    user = apps.get_model("auth", "User").objects.create(username=username)
    secret = settings.PROXY_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = apps.get_model("keys", "ApiKey").objects.create(
        user=user,
        prefix=secret[: len(settings.PROXY_KEY_PREFIX) + 6],
        key_hash=key_hash(secret),
        budget_usd=budget_usd,
    )
    return api_key, secret


def _latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def _old_read(value: float | int | None) -> Decimal | None:
    # What Django's DecimalField read from SQLite's REAL: 15 significant digits, 12 places.
    if value is None:
        return None
    return (
        Context(prec=15).create_decimal_from_float(value).quantize(PICO, context=Context(prec=22))
    )


@pytest.mark.django_db(transaction=True)
def test_money_written_by_the_earlier_schema_reads_the_same_after_migrating():
    sqlite = connection.vendor == "sqlite"
    # (spent, reserved) of three keys' ledgers as the old code left them. On SQLite: REAL from
    # float arithmetic (0.1 + 0.2, a drift below zero), text Django's adapter sent (stored as
    # REAL by NUMERIC affinity), a whole number (stored as INTEGER). On PostgreSQL: NUMERIC.
    if sqlite:
        ledger_rows = [
            (4.99, -5.551115123125783e-17, Decimal("4.99"), Decimal(0)),
            ("1234.56789", 0.30000000000000004, Decimal("1234.56789"), Decimal("0.3")),
            (5, 1234567.123456789, Decimal(5), Decimal("1234567.12345679")),
        ]
        record_costs = [
            ("0.000123", Decimal("0.000123")),
            (1e-12, PICO),
            (5, Decimal(5)),
            (None, None),
        ]
        daily_cost = (7.000000000001, Decimal("7.000000000001"))
    else:
        ledger_rows = [
            (Decimal("4.99"), Decimal(0), Decimal("4.99"), Decimal(0)),
            (Decimal("1234567.123456789012"), PICO, Decimal("1234567.123456789012"), PICO),
            (Decimal(5), Decimal("0.3"), Decimal(5), Decimal("0.3")),
        ]
        record_costs = [
            (Decimal("0.000123"), Decimal("0.000123")),
            (PICO, PICO),
            (Decimal("9999999999.999999999999"), Decimal("9999999999.999999999999")),
            (None, None),
        ]
        daily_cost = (Decimal("7.000000000001"), Decimal("7.000000000001"))

    try:
        _migrate(OLD_SCHEMA)
        keys = [_old_key_issue(f"old-{n}", Decimal(5) if n == 0 else None) for n in range(3)]
        start = connection.ops.adapt_datetimefield_value(EPOCH)
        with connection.cursor() as cursor:
            for (api_key, _secret), (spent, reserved, _, _) in zip(keys, ledger_rows, strict=True):
                cursor.execute(
                    "INSERT INTO keys_quotaledger (api_key_id, user_id, period, period_start,"
                    " spent_usd, reserved_usd, tokens, reserved_tokens, requests)"
                    " VALUES (%s, NULL, 'total', %s, %s, %s, 10, 0, 3)",
                    [api_key.pk, start, spent, reserved],
                )
            api_key = keys[0][0]
            for cost, _ in record_costs:
                cursor.execute(
                    "INSERT INTO usage_usagerecord (created_at, user_id, api_key_id, key_prefix,"
                    " endpoint, model, response_model, service_tier, status_code, error_code,"
                    " stream, prompt_tokens, cached_tokens, cache_write_tokens,"
                    " completion_tokens, reasoning_tokens, audio_input_tokens,"
                    " audio_output_tokens, cost_usd, estimated, client_disconnected,"
                    " upstream_request_id, response_id, request_body, response_body)"
                    " VALUES (%s, %s, %s, %s, 'chat/completions', 'gpt-4o-mini', '', '', 200,"
                    " '', %s, 10, 0, 0, 5, 0, 0, 0, %s, %s, %s, '', '', '', '')",
                    [
                        connection.ops.adapt_datetimefield_value(NOW),
                        api_key.user_id,
                        api_key.pk,
                        api_key.prefix,
                        False,
                        cost,
                        False,
                        False,
                    ],
                )
            cursor.execute(
                "INSERT INTO usage_usagedaily (day, user_id, api_key_id, model, requests, errors,"
                " prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd,"
                " unpriced_requests) VALUES (%s, %s, %s, 'gpt-4o-mini', 4, 0, 40, 0, 20, 0, %s, 1)",
                [NOW.date(), api_key.user_id, api_key.pk, daily_cost[0]],
            )
            if sqlite:
                # The expectations above are what the old code read.
                cursor.execute("SELECT spent_usd, reserved_usd FROM keys_quotaledger ORDER BY id")
                old_reads = [tuple(map(_old_read, row)) for row in cursor.fetchall()]
                assert old_reads == [(s, r) for _, _, s, r in ledger_rows]
                cursor.execute("SELECT cost_usd FROM usage_usagerecord ORDER BY id")
                assert [_old_read(c) for (c,) in cursor.fetchall()] == [c for _, c in record_costs]

        _migrate(_latest())

        for (api_key, _), (_, _, spent, reserved) in zip(keys, ledger_rows, strict=True):
            ledger = QuotaLedger.objects.get(api_key_id=api_key.pk)
            assert (ledger.spent_usd, ledger.reserved_usd) == (spent, reserved)
        records = UsageRecord.objects.order_by("pk")
        assert [r.cost_usd for r in records] == [c for _, c in record_costs]
        assert {(r.state, r.reserved_usd) for r in records} == {(RecordState.DONE, 0)}
        assert UsageDaily.objects.get().cost_usd == daily_cost[1]
        if sqlite:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT DISTINCT typeof(spent_usd), typeof(reserved_usd) FROM keys_quotaledger"
                )
                assert cursor.fetchall() == [("integer", "integer")]

        # Keys issued before the upgrade still work, and the $5 key that had spent $4.99 has
        # exactly one cent left.
        for api_key, secret in keys:
            assert key_info_for_secret(secret).id == api_key.pk
        first = key_info_for_secret(keys[0][1])
        record = reserve(first, Decimal("0.01"))
        with pytest.raises(QuotaExceeded):
            reserve(first, PICO)
        usage_records_write(records=[finished(record, Decimal("0.01"))])
        ledger = QuotaLedger.objects.get(api_key_id=first.id)
        assert (ledger.spent_usd, ledger.reserved_usd, ledger.requests) == (Decimal(5), 0, 4)
    finally:
        # Whatever happened, later tests get the full schema.
        _migrate(_latest())


@pytest.mark.django_db(transaction=True)
def test_a_process_of_the_previous_release_keeps_working_after_migrate():
    """A rolling deploy: `migrate` has run, an old relay process still serves. Its records
    (inserted without the new columns) and, on PostgreSQL, its one-call reservation (the
    previous function's signature) still work."""
    info, _ = issue("olga")
    usage_records_write(records=[finished(reserve(info, Decimal("0.001")), Decimal("0.001"))])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagerecord (created_at, user_id, api_key_id, key_prefix, endpoint,"
            " model, response_model, service_tier, status_code, error_code, stream,"
            " prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens,"
            " reasoning_tokens, audio_input_tokens, audio_output_tokens, estimated,"
            " client_disconnected, upstream_request_id, response_id, request_body,"
            " response_body) VALUES (%s, %s, %s, 'sk-proxy-old', 'chat/completions',"
            " 'gpt-4o-mini', '', '', 200, '', false, 10, 0, 0, 5, 0, 0, 0, false, false, '',"
            " '', '', '')",
            [NOW, info.user_id, info.id],
        )
    row = UsageRecord.objects.get(key_prefix="sk-proxy-old")
    assert (row.state, row.reserved_usd, row.process) == ("done", Decimal(0), "")
    if connection.vendor == "postgresql":
        key_ledger, user_ledger = ledgers_of(info)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT * FROM oaiproxy_quota_reserve(%s, %s, %s, %s, %s, NULL, NULL, NULL,"
                " NULL, NULL, NULL)",
                [key_ledger.pk, user_ledger.pk, info.id, Decimal("0.001"), 10],
            )
            assert cursor.fetchone() is not None


# -- reservations made together (SQLite's batches: keys.services.quota_reserve_many) -----------


@pytest.mark.django_db(transaction=True)
def test_reservations_made_together_never_pass_on_the_same_headroom():
    from keys.services import quota_reserve_many

    key, _ = issue("batch-budget", budget_usd=Decimal("0.25"))
    requests = [
        {"key": key, "cost": Decimal("0.1"), "tokens": 10, "now": NOW, "record": pending(key)}
        for _ in range(4)
    ]
    results = quota_reserve_many(requests)
    granted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(granted) == 2 and len(refused) == 2  # $0.25 holds two of $0.10, not four
    key_ledger, user_ledger = ledgers_of(key)
    assert key_ledger.reserved_usd == Decimal("0.2") and key_ledger.requests == 2
    assert user_ledger.reserved_usd == Decimal("0.2")
    # Only the granted ones have their pending row; a refused one left nothing behind.
    assert UsageRecord.objects.filter(state=RecordState.PENDING).count() == 2
    assert [r["record"].pk is not None for r in requests] == [
        not isinstance(r, Exception) for r in results
    ]


@pytest.mark.django_db(transaction=True)
def test_one_failing_reservation_in_a_batch_takes_no_other_with_it():
    from keys.services import quota_reserve_many

    key, _ = issue("batch-poison")
    poison = pending(key)
    poison.prompt_tokens = 2**70  # no database column holds it
    requests = [
        {"key": key, "cost": Decimal("0.01"), "tokens": 1, "now": NOW, "record": record}
        for record in (pending(key), poison, pending(key))
    ]
    first, bad, last = quota_reserve_many(requests)
    assert isinstance(bad, Exception) and not isinstance(bad, QuotaExceeded)
    assert not isinstance(first, Exception) and not isinstance(last, Exception)
    assert poison.pk is None
    key_ledger, _ = ledgers_of(key)
    assert key_ledger.requests == 2 and key_ledger.reserved_usd == Decimal("0.02")
    assert UsageRecord.objects.filter(state=RecordState.PENDING).count() == 2
