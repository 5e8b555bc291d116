"""Writes of prices and usage records, and the settlement of the reservations they end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from decimal import Decimal

from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import F, QuerySet, Value
from django.utils import timezone

from alerts.services import budget_alerts_record
from keys.fields import MoneyField, money_param
from keys.money import usd
from keys.services import LedgerMove, quota_settle
from keys.sql import Columns, db_values
from usage.models import (
    RecordState,
    UsageDaily,
    UsageHourly,
    UsageLatency,
    UsageRecord,
    latency_bucket,
)

log = logging.getLogger(__name__)


# What completing a record writes over its pending row (everything the relay learnt after the
# reservation; never the reservation's own columns).
# The `process` of a batch's pending record once the batch exists upstream: its reservation is
# held until the batch ends (relay.batches settles it), whichever relay processes live or die.
HELD_BY_BATCH = "batch"
_RESERVATION_FIELDS = {
    "id", "reserved_usd", "reserved_tokens", "key_ledger_id", "user_ledger_id", "team_ledger_id",
}  # fmt: skip
FINAL_FIELDS = [
    f.name
    for f in UsageRecord._meta.concrete_fields
    if not f.primary_key and f.attname not in _RESERVATION_FIELDS
]


def _rollup_deltas(record: UsageRecord, sign: int = 1) -> dict[str, int | Decimal]:
    return {
        "requests": sign,
        "errors": sign if record.status_code >= 400 else 0,
        "prompt_tokens": sign * record.prompt_tokens,
        "cached_tokens": sign * record.cached_tokens,
        "completion_tokens": sign * record.completion_tokens,
        "reasoning_tokens": sign * record.reasoning_tokens,
        "cost_usd": sign * (record.cost_usd or Decimal(0)),
        "unpriced_requests": sign if record.cost_usd is None and record.status_code < 400 else 0,
    }


def rollups_add(entries: list[tuple[UsageRecord, int]]) -> None:
    """Add (sign 1) or take back (sign -1) records in the per-day rollups."""
    rollups: dict[tuple, dict[str, int | Decimal]] = {}
    for record, sign in entries:
        key = (
            record.created_at.astimezone(dt.UTC).date(),
            record.user_id,
            record.api_key_id,
            record.response_model or record.model,
        )
        deltas = _rollup_deltas(record, sign)
        total = rollups.setdefault(key, dict.fromkeys(deltas, 0))
        for field, value in deltas.items():
            total[field] += value
    # Sorted, so two writers lock the rollup rows they share in the same order.
    ordered = sorted(rollups.items(), key=lambda kv: repr(kv[0]))
    # Additions to a key's rows (all the relay writes): one prepared upsert for them all.
    # Take-backs (a reaped estimate replaced) and rows without a key go the long way.
    adds = [(row, d) for row, d in ordered if row[2] is not None and d["requests"] > 0]
    if adds:
        _rollups_upsert(adds)
    for (day, user_id, api_key_id, model), deltas in ordered:
        if api_key_id is not None and deltas["requests"] > 0:
            continue
        # UPDATE first, INSERT on a miss: concurrent writers never lose a count, because the
        # increment happens in the database, not in Python.
        row = {"day": day, "user_id": user_id, "api_key_id": api_key_id, "model": model}
        # Money as a MoneyField value: a bare Decimal would reach SQLite as dollars, not as the
        # column's picodollars.
        increments = {
            f: F(f) + (Value(v, output_field=MoneyField()) if isinstance(v, Decimal) else v)
            for f, v in deltas.items()
        }
        if UsageDaily.objects.filter(**row).update(**increments):
            if deltas["requests"] < 0:
                # A reaped record replaced by its real one may leave its estimate's row empty.
                UsageDaily.objects.filter(**row, requests=0).delete()
            continue
        try:
            with transaction.atomic():
                UsageDaily.objects.create(**row, **deltas)
        except IntegrityError:  # another writer inserted the day's row first
            UsageDaily.objects.filter(**row).update(**increments)
    _hourly_rollups_add(entries)


_ROLLUP_SUMS = (
    "requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens",
    "reasoning_tokens", "cost_usd", "unpriced_requests",
)  # fmt: skip


@functools.cache
def _rollup_upsert_sql() -> str:
    quote = connection.ops.quote_name
    table = quote(UsageDaily._meta.db_table)
    group = ["day", "user_id", "api_key_id", "model"]
    columns = ", ".join(quote(c) for c in (*group, *_ROLLUP_SUMS))
    sums = ", ".join(f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in _ROLLUP_SUMS)
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * (len(group) + len(_ROLLUP_SUMS)))})"  # noqa: S608 (names from _meta)
        f" ON CONFLICT ({', '.join(quote(c) for c in group)}) DO UPDATE SET {sums}"
    )


def _rollups_upsert(adds: list[tuple[tuple, dict[str, int | Decimal]]]) -> None:
    """INSERT … ON CONFLICT DO UPDATE (SQLite and PostgreSQL alike): the increment happens in
    the database, so concurrent writers never lose a count, in one statement per row and no
    query built per row (the ORM's UPDATE-then-INSERT cost a millisecond a record)."""
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    params = [
        [
            connection.ops.adapt_datefield_value(day), user_id, api_key_id, model,
            *(
                money_param(deltas[f], connection) if f == "cost_usd" else deltas[f]
                for f in _ROLLUP_SUMS
            ),
        ]
        for (day, user_id, api_key_id, model), deltas in adds
    ]  # fmt: skip
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            from psycopg2.extras import execute_batch

            execute_batch(cursor.cursor, _rollup_upsert_sql(), params, page_size=100)
        else:
            cursor.executemany(_rollup_upsert_sql(), params)


_HOURLY_SUMS = ("requests", "errors", "cost_usd", "unpriced_requests")


@functools.cache
def _hourly_upsert_sql() -> tuple[str, str]:
    quote = connection.ops.quote_name
    hourly, latency = (quote(m._meta.db_table) for m in (UsageHourly, UsageLatency))
    sums = ", ".join(
        f"{quote(c)} = {hourly}.{quote(c)} + excluded.{quote(c)}" for c in _HOURLY_SUMS
    )
    return (
        f"INSERT INTO {hourly} (hour, user_id, model, {', '.join(_HOURLY_SUMS)})"  # noqa: S608 (names from _meta)
        f" VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (hour, user_id, model) DO UPDATE SET {sums}",
        f"INSERT INTO {latency} (hour, user_id, bucket, requests) VALUES (%s, %s, %s, %s)"  # noqa: S608
        f" ON CONFLICT (hour, user_id, bucket) DO UPDATE SET requests = {latency}.requests"
        " + excluded.requests",
    )


def _hourly_rollups_add(entries: list[tuple[UsageRecord, int]]) -> None:
    """The hourly totals and latency histogram of the same records, in the same transaction
    and by the same kind of upsert as the daily rollup (the increment happens in the
    database, rows in sorted order so two writers lock them in the same order)."""
    connection = connections[DEFAULT_DB_ALIAS]
    totals: dict[tuple, list] = {}
    latencies: dict[tuple, int] = {}
    for record, sign in entries:
        hour = record.created_at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        deltas = _rollup_deltas(record, sign)
        row = totals.setdefault(
            (hour, record.user_id, record.response_model or record.model), [0, 0, Decimal(0), 0]
        )
        for index, field in enumerate(_HOURLY_SUMS):
            row[index] += deltas[field]
        bucket = (hour, record.user_id, latency_bucket(record.latency_ms))
        latencies[bucket] = latencies.get(bucket, 0) + sign
    adapt = connection.ops.adapt_datetimefield_value
    hourly_sql, latency_sql = _hourly_upsert_sql()
    hourly_params = [
        [adapt(hour), user_id, model, n, errors, money_param(cost, connection), unpriced]
        for (hour, user_id, model), (n, errors, cost, unpriced) in sorted(totals.items())
    ]
    latency_params = [[adapt(h), u, b, n] for (h, u, b), n in sorted(latencies.items())]
    with connection.cursor() as cursor:
        for sql, params in ((hourly_sql, hourly_params), (latency_sql, latency_params)):
            if connection.vendor == "postgresql":
                from psycopg2.extras import execute_batch

                execute_batch(cursor.cursor, sql, params, page_size=100)
            else:
                cursor.executemany(sql, params)


_ROW_FIELDS = ("id", "state", "process", "key_ledger_id", "user_ledger_id", "reserved_usd",
               "reserved_tokens", "cost_usd", "prompt_tokens", "completion_tokens",
               "team_ledger_id")  # fmt: skip


@dataclasses.dataclass(slots=True)
class _Row:
    """What settling reads of a pending row (a model instance costs more to make than this
    whole read: forty fields with their defaults)."""

    pk: int
    state: str
    process: str
    key_ledger_id: int | None
    user_ledger_id: int | None
    reserved_usd: Decimal
    reserved_tokens: int
    cost_usd: Decimal | None
    prompt_tokens: int
    completion_tokens: int
    team_ledger_id: int | None


@functools.cache
def _rows_query() -> tuple[list, str]:
    quote = connection.ops.quote_name
    fields = [UsageRecord._meta.get_field(name) for name in _ROW_FIELDS]
    converters = [
        (
            f.cached_col,
            connection.ops.get_db_converters(f.cached_col)
            + f.cached_col.get_db_converters(connection),
        )
        for f in fields
    ]
    select = (
        f"SELECT {', '.join(quote(f.column) for f in fields)} "  # noqa: S608 (names from _meta)
        f"FROM {quote(UsageRecord._meta.db_table)} WHERE state <> %s AND id IN "
    )
    return converters, select


def _unfinished_rows(ids: list[int]) -> list[_Row | UsageRecord]:
    """The rows of `ids` not done yet, locked, in id order: the few columns settling needs, by
    a prepared query (the ORM builds one per batch at a millisecond's cost); a reaped row, whose
    estimate is taken back out of the rollups, is read whole."""
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    converters, select = _rows_query()
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    sql = f"{select}({', '.join(['%s'] * len(ids))}) ORDER BY id{lock}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [RecordState.DONE, *ids])
        found = cursor.fetchall()
    rows: list[_Row | UsageRecord] = []
    reaped = []
    for values in found:
        converted = []
        for (col, field_converters), value in zip(converters, values, strict=True):
            for converter in field_converters:
                value = converter(value, col, connection)
            converted.append(value)
        row = _Row(*converted)
        if row.state == RecordState.PENDING:
            rows.append(row)
        else:
            reaped.append(row.pk)
    if reaped:
        rows += list(UsageRecord.objects.filter(pk__in=reaped))
        rows.sort(key=lambda row: row.pk)
    return rows


def _tokens(record: UsageRecord) -> int:
    return record.prompt_tokens + record.completion_tokens


def usage_records_write(*, records: list[UsageRecord]) -> int:
    """See `_records_write`; a failed write leaves the records as they were given."""
    new = [r for r in records if r.pk is None]
    try:
        return _records_write(records)
    except BaseException:
        # bulk_create set the new records' ids in a transaction that rolled back: without
        # this, trying them again would take them for written.
        for record in new:
            record.pk = None
            record._state.adding = True
        raise


@functools.cache
def _complete_sql() -> tuple[str, Columns]:
    fields = [UsageRecord._meta.get_field(name) for name in FINAL_FIELDS]
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(UsageRecord._meta.db_table)} SET "  # noqa: S608 (names from _meta)
        + ", ".join(f"{quote(f.column)} = %s" for f in fields)
        + " WHERE id = %s"
    )
    return sql, Columns(fields)


def _complete_rows(records: list[UsageRecord]) -> None:
    """Write the final fields over pending rows: one prepared UPDATE per row, sent in pages
    (bulk_update's CASE per field and row costs milliseconds of Python per record)."""
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    if not records:
        return
    sql, columns = _complete_sql()
    params = [[*db_values(r, columns, connection), r.pk] for r in records]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            from psycopg2.extras import execute_batch

            execute_batch(cursor.cursor, sql, params, page_size=100)
        else:
            cursor.executemany(sql, params)


@transaction.atomic
def _records_write(records: list[UsageRecord]) -> int:
    """Write finished requests' records in one transaction: a refused request's record is
    inserted; a granted request's completes its pending row (written with its reservation)
    and settles the reservation to the real cost. Ledgers, records and rollups change together,
    so ledger spend always equals the sum of record costs. Returns the records written.

    A pending row moves on exactly once: the row is locked and its state checked, so the
    relay's settlement and the reaper (for a process it took for dead) can never both end
    it. If the reaper got there first, the real record replaces its estimate and the ledger
    takes the difference.
    """
    new = [r for r in records if r.pk is None]
    # A record whose row exists already: its request's reservation committed although the
    # relay heard an error, or an earlier try of this write committed unheard. It completes
    # (or skips) that row instead of making a second one.
    uids = {r.uid: r for r in new if r.uid is not None}
    if uids:
        # Bounded by created_at, so PostgreSQL searches only the month partitions around it
        # (there uid is unique together with created_at, the partition key). The relay gives a
        # record its pending row's created_at; a day either side spares any other caller.
        moments = [r.created_at for r in uids.values()]
        found = UsageRecord.objects.filter(
            uid__in=uids,
            created_at__gte=min(moments) - dt.timedelta(days=1),
            created_at__lte=max(moments) + dt.timedelta(days=1),
        )
        for pk, uid in found.values_list("pk", "uid"):
            uids[uid].pk = pk
            uids[uid]._state.adding = False
        new = [r for r in new if r.pk is None]
    finished = {r.pk: r for r in records if r.pk is not None}
    for record in new:
        record.state = RecordState.DONE
    UsageRecord.objects.bulk_create(new)
    rollups: list[tuple[UsageRecord, int]] = [(r, 1) for r in new]
    moves: list[LedgerMove] = []
    completed: list[UsageRecord] = []
    if finished:
        for row in _unfinished_rows(list(finished)):
            record = finished[row.pk]
            record.state = RecordState.DONE
            record.process = row.process
            spend = record.cost_usd or Decimal(0)
            if row.state == RecordState.PENDING:
                moves.append(
                    LedgerMove(
                        row.key_ledger_id, row.user_ledger_id, row.reserved_usd,
                        row.reserved_tokens, spend, _tokens(record), row.team_ledger_id,
                    )
                )  # fmt: skip
            else:  # reaped: replace the reaper's estimate by what really happened
                moves.append(
                    LedgerMove(
                        row.key_ledger_id, row.user_ledger_id, Decimal(0), 0,
                        spend - (row.cost_usd or Decimal(0)), _tokens(record) - _tokens(row),
                        row.team_ledger_id,
                    )
                )  # fmt: skip
                rollups.append((row, -1))
            rollups.append((record, 1))
            completed.append(record)
        if len(completed) < len(finished):
            log.warning(
                "%d usage records were already complete or gone; not settled twice",
                len(finished) - len(completed),
            )
        _complete_rows(completed)
    rollups_add(rollups)
    # Last, so the ledger rows that reservations wait for are locked only until the commit.
    spends = quota_settle(moves=[m for m in moves if m.key_ledger_id is not None])
    # In this transaction: a threshold's alert is committed with the spend that reached it.
    budget_alerts_record(spends=spends, now=timezone.now())
    return len(new) + len(completed)


def usage_record_create(*, record: UsageRecord) -> UsageRecord:
    """Save one request's record; see `usage_records_write`."""
    usage_records_write(records=[record])
    return record


def usage_record_release(*, record_id: int, error_code: str, status_code: int) -> bool:
    """End a pending record whose full record could not be written (it was refused by the
    database): keep the row with what is safe to store, bill the estimate it was reserved
    with, release the rest. True if it ended the reservation."""
    with transaction.atomic():
        row = (
            UsageRecord.objects.select_for_update()
            .filter(pk=record_id, state=RecordState.PENDING)
            .first()
        )
        if row is None:
            return False
        row.state = RecordState.DONE
        row.status_code = status_code
        row.error_code = error_code
        row.estimated = True
        row.save(update_fields=["state", "status_code", "error_code", "estimated"])
        rollups_add([(row, 1)])
        spends = quota_settle(moves=[_end_at_estimate(row)])
        budget_alerts_record(spends=spends, now=timezone.now())
    return True


def _end_at_estimate(row: UsageRecord) -> LedgerMove:
    """A pending row ended without its real usage: its estimate spent, the rest released."""
    return LedgerMove(
        row.key_ledger_id, row.user_ledger_id, row.reserved_usd, row.reserved_tokens,
        row.cost_usd or Decimal(0), _tokens(row), row.team_ledger_id,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class ReapResult:
    records: int
    released_usd: Decimal
    billed_usd: Decimal


def _reap_rows(rows: list[UsageRecord], now: dt.datetime) -> tuple[Decimal, Decimal]:
    """End these locked pending rows as reaped; (released, billed)."""
    moves = []
    released = billed = Decimal(0)
    for row in rows:
        row.state = RecordState.REAPED
        row.status_code = 502
        row.error_code = "proxy_died"
        row.estimated = True
        # Clamped: another host's clock can be behind, and a row can be weeks old.
        row.latency_ms = max(0, min(int((now - row.created_at).total_seconds() * 1000), 2**31 - 1))
        move = _end_at_estimate(row)
        moves.append(move)
        released += move.release_usd - move.spend_usd
        billed += move.spend_usd
    UsageRecord.objects.bulk_update(
        rows, ["state", "status_code", "error_code", "estimated", "latency_ms"]
    )
    rollups_add([(row, 1) for row in rows])
    budget_alerts_record(spends=quota_settle(moves=moves), now=now)
    return released, billed


def usage_records_reap(
    *, live_processes: list[str], batch: int = 500, now: dt.datetime | None = None
) -> ReapResult:
    """End the reservations of relay processes that are not in `live_processes` (they died:
    `kill -9`, OOM, a lost machine). Each pending record becomes a `reaped` record billed at
    what it was reserved with as its estimate (the prompt's input price: OpenAI bills the input
    of any request it received) and marked as such; the rest of its reservation is released.
    A row the database will not take (a ledger past what SQLite holds) is left out and logged:
    it never stops the others from being healed."""
    now = now or timezone.now()
    records = 0
    released = billed = Decimal(0)
    stuck: set[int] = set()

    def pending() -> QuerySet[UsageRecord]:
        # skip_locked: a row the relay is completing right now is the relay's to end.
        return (
            UsageRecord.objects.select_for_update(skip_locked=True)
            .filter(state=RecordState.PENDING)
            # A batch's reservation outlives every process: it ends when the batch does.
            .exclude(process__in=[*live_processes, HELD_BY_BATCH])
            .exclude(pk__in=stuck)
            .order_by("pk")
        )

    while True:
        try:
            with transaction.atomic():
                rows = list(pending()[:batch])
                if not rows:
                    break
                freed, charged = _reap_rows(rows, now)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 (one bad row: heal the rest one by one)
            for row in rows:
                try:
                    with transaction.atomic():
                        locked = list(pending().filter(pk=row.pk))
                        if locked:
                            freed, charged = _reap_rows(locked, now)
                            released, billed, records = (
                                released + freed,
                                billed + charged,
                                records + 1,
                            )
                except (OperationalError, InterfaceError):
                    raise
                except Exception:
                    log.exception("reaper: pending record %s could not be ended", row.pk)
                    stuck.add(row.pk)
            continue
        released, billed, records = released + freed, billed + charged, records + len(rows)
        if len(rows) < batch:
            break
    return ReapResult(records=records, released_usd=released, billed_usd=billed)


def reservations_heal(*, stale_after: dt.timedelta, keep: tuple[str, ...] = ()) -> ReapResult:
    """The reaper: end what relay processes not seen within `stale_after` left reserved.
    `keep` names processes to treat as alive whatever their heartbeat (the caller's own)."""
    from keys.services import relay_processes_forget, relay_processes_live

    live = [*relay_processes_live(stale_after=stale_after), *keep]
    result = usage_records_reap(live_processes=live)
    relay_processes_forget(stale_after=stale_after)
    if result.records:
        log.warning(
            "reaper: ended %d reservations of dead relay processes (billed $%s as estimates, "
            "released $%s)",
            result.records,
            usd(result.billed_usd),
            usd(result.released_usd),
        )
    return result
