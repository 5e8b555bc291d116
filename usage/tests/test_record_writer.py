"""The usage-record writer never loses a record or bills one twice: a refused batch is split
down to the record at fault, a record the database will never take is kept in a file with its
reservation ended, and a pending row moves on exactly once (settled, reaped, or both in turn).

Transactional tests throughout: the writer runs in autocommit, and what these check (a batch
refused at COMMIT by a deferred foreign key, a reservation made by PostgreSQL's one-statement
path) only happens outside a test's wrapping transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from keys.models import ApiKey, QuotaLedger, RelayProcess, period_start
from keys.selectors import KeyInfo, key_info_for_secret
from keys.services import key_issue, quota_reserve, relay_process_beat
from relay.recording import write_now
from tests.factories import request_record
from usage.models import RecordState, UsageDaily, UsageRecord
from usage.services import reservations_heal, usage_records_reap, usage_records_write

pytestmark = [
    pytest.mark.usefixtures("fresh_key_caches"),
    pytest.mark.django_db(transaction=True),
]

HOLD = Decimal("0.05")  # what each request reserves: its worst case
ESTIMATE = Decimal("0.002")  # what its prompt costs: billed if its process dies


@pytest.fixture
def key() -> KeyInfo:
    _, secret = key_issue(username="gina", budget_usd=Decimal(100))
    return key_info_for_secret(secret)


@pytest.fixture
def unwritable(settings, tmp_path):
    settings.USAGE_UNWRITABLE_FILE = str(tmp_path / "unwritable.jsonl")
    return tmp_path / "unwritable.jsonl"


def reserve(key: KeyInfo, *, process: str = "relay-1", hold: Decimal = HOLD) -> UsageRecord:
    """A granted request, as the relay makes it: its reservation and its pending row."""
    record = request_record(key, prompt_tokens=1000, cost_usd=ESTIMATE, process=process)
    quota_reserve(key=key, cost=hold, tokens=1500, now=record.created_at, record=record)
    return record


def finished(record: UsageRecord, cost: Decimal, *, prompt: int = 900) -> UsageRecord:
    """The same request once OpenAI answered."""
    record.status_code = 200
    record.response_model = "gpt-4o-mini-2024-07-18"
    record.prompt_tokens = prompt
    record.completion_tokens = 50
    record.cost_usd = cost
    record.estimated = False
    record.latency_ms = 420
    return record


def refused(key: KeyInfo) -> UsageRecord:
    """A request answered by the proxy itself (no reservation): a new record."""
    return UsageRecord(
        created_at=timezone.now(),
        user_id=key.user_id,
        api_key_id=key.id,
        key_prefix=key.prefix,
        endpoint="chat/completions",
        model="gpt-4o-mini",
        status_code=429,
        error_code="rate_limit_exceeded",
    )


def ledger(key: KeyInfo) -> QuotaLedger:
    return QuotaLedger.objects.get(
        api_key_id=key.id,
        period=key.key_limits.period,
        period_start=period_start(key.key_limits.period, timezone.now()),
    )


def books(key: KeyInfo) -> tuple[Decimal, Decimal, int]:
    """(spent, reserved, tokens) of the key's ledger, as /v1/proxy/me would show them."""
    row = ledger(key)
    return row.spent_usd, row.reserved_usd, row.tokens


def rollup_totals() -> dict:
    return UsageDaily.objects.aggregate(
        requests=Sum("requests"), errors=Sum("errors"), cost=Sum("cost_usd")
    )


# --- A refused batch ---------------------------------------------------------------------------


@pytest.mark.parametrize("poison", ["huge_token_count", "nul_in_model"])
def test_one_poison_record_among_a_hundred_is_sanitised_and_all_are_written(
    key, unwritable, poison
):
    granted = [finished(reserve(key), Decimal("0.000123") * (i + 1)) for i in range(60)]
    answered_by_proxy = [refused(key) for _ in range(40)]
    bad = finished(reserve(key), Decimal("0.0042"))
    if poison == "huge_token_count":
        bad.prompt_tokens = 2**70  # no integer column holds it (SQLite: OverflowError)
    else:
        bad.model = "gpt-4o\x00-mini"  # PostgreSQL refuses NUL in text
    batch = [*granted[:30], *answered_by_proxy[:20], bad, *granted[30:], *answered_by_proxy[20:]]

    outcome = write_now(batch)

    assert (outcome.written, outcome.unwritable) == (101, 0)
    assert not unwritable.exists()
    assert UsageRecord.objects.count() == 101
    assert not UsageRecord.objects.filter(state=RecordState.PENDING).exists()
    bad.refresh_from_db()
    assert bad.cost_usd == Decimal("0.0042")
    if poison == "huge_token_count":
        assert bad.prompt_tokens == 2**31 - 1  # clamped to the column
    elif connection.vendor == "postgresql":
        assert bad.model == "gpt-4o\ufffd-mini"
    else:
        assert bad.model == "gpt-4o\x00-mini"  # SQLite stores it: nothing to sanitise
    spent = sum(r.cost_usd for r in granted) + Decimal("0.0042")
    assert books(key)[:2] == (spent, 0)
    assert ledger(key).requests == 61
    assert rollup_totals() == {"requests": 101, "errors": 40, "cost": spent}


def test_a_record_the_database_never_takes_is_kept_aside_and_its_reservation_ended(key, unwritable):
    granted = [finished(reserve(key), Decimal("0.001")) for _ in range(10)]
    bad = finished(reserve(key), Decimal("0.003"))
    # A user that does not exist: on both databases Django's foreign keys are DEFERRABLE
    # INITIALLY DEFERRED, so the batch is refused only at COMMIT (an IntegrityError there),
    # after every statement of it succeeded.
    bad.user_id = 987_654_321
    batch = [*granted[:5], bad, *granted[5:], *(refused(key) for _ in range(5))]

    outcome = write_now(batch)

    assert (outcome.written, outcome.unwritable) == (15, 1)
    kept = [json.loads(line) for line in unwritable.read_text().splitlines()]
    assert len(kept) == 1
    assert (kept[0]["id"], kept[0]["user_id"], kept[0]["cost_usd"]) == (
        bad.pk,
        987_654_321,
        "0.003",
    )
    assert kept[0]["error"].startswith("IntegrityError")
    # Its row ends as what is safe to store: the user who made it, billed its estimate.
    row = UsageRecord.objects.get(pk=bad.pk)
    assert (row.state, row.error_code, row.estimated) == (
        RecordState.DONE,
        "record_unwritable",
        True,
    )
    assert (row.user_id, row.cost_usd, row.status_code) == (key.user_id, ESTIMATE, 200)
    assert books(key)[:2] == (Decimal("0.010") + ESTIMATE, 0)
    assert rollup_totals()["requests"] == 16
    assert UsageRecord.objects.filter(state=RecordState.DONE).count() == 16


def test_sanitising_a_record_never_hands_it_to_another_tenants_key(unwritable):
    # ApiKey ids are BigAutoField (DEFAULT_AUTO_FIELD): past 2**31-1 on a large or id-sharded
    # database. Here the other tenant's key holds id 2**31-1, this one's a larger id.
    other_key, _ = key_issue(username="other-tenant")
    ApiKey.objects.filter(pk=other_key.pk).update(id=2**31 - 1)
    own_key, secret = key_issue(username="hugo")
    ApiKey.objects.filter(pk=own_key.pk).update(id=2**31 + 9)
    key = key_info_for_secret(secret)
    assert key.id == 2**31 + 9

    record = refused(key)
    record.prompt_tokens = 2**70  # refused once, so the writer sanitises the record
    outcome = write_now([record])

    assert (outcome.written, outcome.unwritable) == (1, 0)
    row = UsageRecord.objects.get()
    assert row.prompt_tokens == 2**31 - 1
    # The other tenant's key would show this request in its usage.
    assert row.api_key_id == 2**31 + 9
    assert not UsageDaily.objects.filter(api_key_id=2**31 - 1).exists()


# --- Exactly once ------------------------------------------------------------------------------


def test_completing_a_pending_record_twice_bills_it_once(key):
    record = finished(reserve(key), Decimal("0.0123"))
    assert usage_records_write(records=[record]) == 1
    # The writer tries a batch again when it cannot tell whether its COMMIT landed; and a
    # second copy of the same request's record (another path ending it) must not count either.
    assert usage_records_write(records=[record]) == 0
    copy = UsageRecord.objects.get(pk=record.pk)
    copy.cost_usd = Decimal("0.5")
    assert write_now([copy]).written == 0

    assert books(key) == (Decimal("0.0123"), 0, 950)
    assert ledger(key).requests == 1
    assert UsageRecord.objects.get(pk=record.pk).cost_usd == Decimal("0.0123")
    assert rollup_totals() == {"requests": 1, "errors": 0, "cost": Decimal("0.0123")}


def test_a_record_completed_after_the_reaper_ended_it_bills_the_real_cost_once(key):
    record = reserve(key, process="relay-presumed-dead")
    reaped = usage_records_reap(live_processes=[])
    assert (reaped.records, reaped.billed_usd, reaped.released_usd) == (
        1,
        ESTIMATE,
        HOLD - ESTIMATE,
    )
    assert books(key) == (ESTIMATE, 0, 1000)  # billed the prompt's estimate meanwhile
    row = UsageRecord.objects.get(pk=record.pk)
    assert (row.state, row.status_code, row.error_code) == (RecordState.REAPED, 502, "proxy_died")

    # The process was alive after all (a long GC pause, a network partition): its record lands.
    assert usage_records_write(records=[finished(record, Decimal("0.0037"))]) == 1

    assert books(key) == (Decimal("0.0037"), 0, 950)
    assert ledger(key).requests == 1
    row.refresh_from_db()
    assert (row.state, row.status_code, row.cost_usd) == (RecordState.DONE, 200, Decimal("0.0037"))
    assert rollup_totals() == {"requests": 1, "errors": 0, "cost": Decimal("0.0037")}
    tokens = UsageDaily.objects.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    assert tokens == {"p": 900, "c": 50}
    # The estimate's rollup row (under the requested model) is gone, not left at zero for the
    # dashboard to list.
    assert not UsageDaily.objects.filter(requests=0).exists()


# --- The reaper --------------------------------------------------------------------------------


def test_the_reaper_ends_only_the_reservations_of_processes_not_listed_as_live(key):
    alive = reserve(key, process="relay-alive")
    dead = [reserve(key, process="relay-dead") for _ in range(3)]

    result = usage_records_reap(live_processes=["relay-alive"])

    assert result.records == 3
    states = dict(UsageRecord.objects.values_list("pk", "state"))
    assert states[alive.pk] == RecordState.PENDING
    assert {states[r.pk] for r in dead} == {RecordState.REAPED}
    assert books(key)[:2] == (3 * ESTIMATE, HOLD)  # the live request still holds its budget
    # And the live request ends normally afterwards.
    assert usage_records_write(records=[finished(alive, Decimal("0.01"))]) == 1
    assert books(key)[:2] == (3 * ESTIMATE + Decimal("0.01"), 0)


def test_healing_leaves_processes_seen_recently_alone(key):
    now = timezone.now()
    relay_process_beat(token="relay-live", hostname="web-1", pid=101, started_at=now)
    RelayProcess.objects.create(
        token="relay-gone",
        hostname="web-2",
        pid=202,
        started_at=now - dt.timedelta(hours=1),
        seen_at=now - dt.timedelta(minutes=10),
    )
    live = reserve(key, process="relay-live")
    mine = reserve(key, process="relay-self")  # the healer's own process: never registered
    gone = reserve(key, process="relay-gone")
    unknown = reserve(key, process="relay-never-registered")

    result = reservations_heal(stale_after=dt.timedelta(seconds=30), keep=("relay-self",))

    assert result.records == 2
    states = dict(UsageRecord.objects.values_list("pk", "state"))
    assert (states[live.pk], states[mine.pk]) == (RecordState.PENDING, RecordState.PENDING)
    assert (states[gone.pk], states[unknown.pk]) == (RecordState.REAPED, RecordState.REAPED)
    assert books(key)[:2] == (2 * ESTIMATE, 2 * HOLD)
    # A process not seen for ten times stale_after leaves the registry; the live one stays.
    # (Only this test's rows: on PostgreSQL a server another test started may still beat.)
    mine_listed = RelayProcess.objects.filter(token__in=["relay-live", "relay-gone"])
    assert list(mine_listed.values_list("token", flat=True)) == ["relay-live"]


def test_one_row_the_database_refuses_never_stops_the_reaper_healing_the_rest(key, monkeypatch):
    from usage import services as usage_services

    dead = [reserve(key, process="relay-dead") for _ in range(4)]
    poison = dead[2]
    real_settle = usage_services.quota_settle

    def settle(*, moves):  # the database refuses this one row's ledger update
        if poison.pk in reaping:
            raise ValueError("refused")
        return real_settle(moves=moves)

    reaping: set[int] = set()
    real_reap_rows = usage_services._reap_rows

    def reap_rows(rows, now):
        reaping.clear()
        reaping.update(r.pk for r in rows)
        return real_reap_rows(rows, now)

    monkeypatch.setattr(usage_services, "quota_settle", settle)
    monkeypatch.setattr(usage_services, "_reap_rows", reap_rows)

    result = usage_records_reap(live_processes=[])

    assert result.records == 3
    states = dict(UsageRecord.objects.values_list("pk", "state"))
    assert states[poison.pk] == RecordState.PENDING
    assert {states[r.pk] for r in dead if r is not poison} == {RecordState.REAPED}
    assert books(key)[:2] == (3 * ESTIMATE, HOLD)  # three healed, the poison still held


def test_a_write_whose_commit_was_not_heard_is_not_made_twice(key):
    first = refused(key)
    first.uid = uuid.uuid4()
    usage_records_write(records=[first])
    # The connection broke after COMMIT: the writer heard an error and tries the same record
    # again, as it was handed over (no id).
    again = refused(key)
    again.uid = first.uid
    usage_records_write(records=[again])
    assert UsageRecord.objects.filter(api_key_id=key.id).count() == 1
    assert rollup_totals()["requests"] == 1


def test_a_reservation_committed_but_heard_as_failed_is_ended_by_its_record(key):
    # The reservation's statement committed, then the connection broke before its answer:
    # the relay answered 503 and recorded it as a request with no reservation.
    record = reserve(key)
    answered = refused(key)
    answered.uid = record.uid
    answered.status_code, answered.error_code = 503, "database_unavailable"
    assert usage_records_write(records=[answered]) == 1
    row = UsageRecord.objects.get(api_key_id=key.id)
    assert (row.state, row.status_code) == (RecordState.DONE, 503)
    assert books(key)[:2] == (Decimal(0), 0)  # nothing held, nothing billed
