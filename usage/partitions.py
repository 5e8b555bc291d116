"""The usage table's month partitions on PostgreSQL: the swap the migration makes, partitions
made ahead of time, and whole months dropped by retention. SQLite has one plain table and
every function here does nothing on it.

`usage_usagerecord` is partitioned by RANGE on `created_at`, one partition per UTC month
(`usage_usagerecord_y2026m01`), and a DEFAULT partition (`usage_usagerecord_default`) that
takes any row whose month has no partition yet, so an insert never fails for want of one.
PostgreSQL wants the partition key in every unique constraint of a partitioned table: in the
database the primary key is (id, created_at) and `uid` is unique with `created_at`. Django
still takes `id` for the primary key (it comes from one sequence and stays unique), and the
relay finds a record again by its uid *and* its created_at (the same on its pending row and
its final one), so neither the writer nor the admin notices.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

log = logging.getLogger(__name__)

TABLE = "usage_usagerecord"
DEFAULT_PARTITION = f"{TABLE}_default"
# Months made ahead of the current one, by `migrate`, at each process start and hourly after.
MONTHS_AHEAD = 3
_CHECK_EVERY_SECONDS = 3600
_checked_at: float | None = None


def month_start(moment: dt.datetime | dt.date) -> dt.datetime:
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def partition_name(start: dt.datetime) -> str:
    return f"{TABLE}_y{start.year:04d}m{start.month:02d}"


@dataclasses.dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start: dt.datetime | None  # None for the DEFAULT partition
    end: dt.datetime | None
    rows: int  # PostgreSQL's estimate (reltuples), -1 before the first ANALYZE

    @property
    def is_default(self) -> bool:
        return self.start is None


def is_partitioned(connection: BaseDatabaseWrapper) -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", [TABLE])
        found = cursor.fetchone()
    return found is not None and found[0] == "p"


def partitions_list(connection: BaseDatabaseWrapper | None = None) -> list[Partition]:
    """The table's partitions, oldest month first, DEFAULT last; [] when not partitioned."""
    connection = connection or connections[DEFAULT_DB_ALIAS]
    if not is_partitioned(connection):
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(%s)",
            [TABLE],
        )
        found = cursor.fetchall()
    partitions = []
    for name, bound, rows in found:
        if bound == "DEFAULT":
            partitions.append(Partition(name, None, None, rows))
            continue
        # FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')
        start_text, end_text = bound.split("'")[1], bound.split("'")[3]
        start, end = (
            dt.datetime.fromisoformat(t).astimezone(dt.UTC) for t in (start_text, end_text)
        )
        partitions.append(Partition(name, start, end, rows))
    partitions.sort(
        key=lambda p: (p.start is None, p.start or dt.datetime.max.replace(tzinfo=dt.UTC))
    )
    return partitions


def _create_month(cursor, start: dt.datetime) -> bool:  # noqa: ANN001 (a DB-API cursor)
    """Make the partition of the month from `start`; False if it exists. Rows of that month
    already in the DEFAULT partition (written while it was missing) are moved into it:
    PostgreSQL refuses a new partition whose rows the DEFAULT partition holds."""
    name = partition_name(start)
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    if cursor.fetchone()[0]:
        return False
    end = next_month(start)
    bounds = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    cursor.execute(
        f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION}"  # noqa: S608 (our own names)
        " WHERE created_at >= %s AND created_at < %s)",
        [start, end],
    )
    if not cursor.fetchone()[0]:
        cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} {bounds}")
        return True
    # A table like the parent, the month's rows moved into it, then attached: ATTACH checks
    # the DEFAULT partition holds none of its rows any more.
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"  # noqa: S608 (our own names)
        " WHERE created_at >= %s AND created_at < %s RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved",
        [start, end],
    )
    log.warning(
        "usage partitions: moved %d records of %s from the DEFAULT partition into %s",
        cursor.rowcount, f"{start:%Y-%m}", name,
    )  # fmt: skip
    cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} {bounds}")
    return True


def partitions_ensure(
    *,
    months: list[dt.datetime] | None = None,
    ahead: int = MONTHS_AHEAD,
    now: dt.datetime | None = None,
    connection: BaseDatabaseWrapper | None = None,
) -> list[str]:
    """Make the partitions of this month and the `ahead` next ones (or of `months`) that do
    not exist yet; the names made. Several processes may run it at once: an advisory lock
    makes them take turns, and each makes only what is still missing."""
    connection = connection or connections[DEFAULT_DB_ALIAS]
    if not is_partitioned(connection):
        return []
    if months is None:
        start = month_start(now or timezone.now())
        months = [start]
        for _ in range(ahead):
            months.append(next_month(months[-1]))
    made = []
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        # Making a partition locks the whole table for a moment: rather than hold writers up
        # behind a long report, give up and try again next hour (months are made 3 ahead).
        cursor.execute("SET LOCAL lock_timeout = '2s'")
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE + " partitions"])
        for start in sorted({month_start(m) for m in months}):
            if _create_month(cursor, start):
                made.append(partition_name(start))
    if made:
        log.info("usage partitions: made %s", ", ".join(made))
    return made


def partitions_keep_ahead() -> None:
    """At a relay process's start and at most hourly after (from its heartbeat): the coming
    months' partitions. Never raises: a missing partition only sends rows to DEFAULT."""
    global _checked_at
    now = time.monotonic()
    if _checked_at is not None and now - _checked_at < _CHECK_EVERY_SECONDS:
        return
    try:
        partitions_ensure()
    except Exception as exc:  # noqa: BLE001 (tried again next hour; inserts still work)
        log.warning("usage partitions: could not make next months' (%s)", exc)
        return
    _checked_at = now


def partition_pending(*, partition: Partition) -> bool:
    """Whether the partition holds a pending record (checked again as it is dropped)."""
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {partition.name} WHERE state = 'pending')"  # noqa: S608
        )
        return cursor.fetchone()[0]


def partition_drop(
    *, partition: Partition, connection: BaseDatabaseWrapper | None = None
) -> int | None:
    """DETACH and DROP a month's partition: the rows it held, or None when it was kept
    because it holds a pending record (a reservation in flight or held by a batch), whose
    row must stay for whatever ends it.

    DETACH takes an ACCESS EXCLUSIVE lock on the whole table for a moment: writers wait for
    it, so it gives up after `lock_timeout` (5 s) rather than hold them up behind a long
    query, and the month is tried again at the next run."""
    connection = connection or connections[DEFAULT_DB_ALIAS]
    assert not partition.is_default
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {partition.name}")
        # Checked once detached: nothing can write the month's rows any more.
        cursor.execute(
            f"SELECT count(*), count(*) FILTER (WHERE state = 'pending') FROM {partition.name}"  # noqa: S608
        )
        rows, pending = cursor.fetchone()
        if pending:
            transaction.set_rollback(True, using=connection.alias)
            return None
        cursor.execute(f"DROP TABLE {partition.name}")
    return rows


# -- the migration's swap ----------------------------------------------------------------------


def _columns(cursor, table: str) -> list[str]:  # noqa: ANN001
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [table],
    )
    return [row[0] for row in cursor.fetchall()]


def table_swap(
    connection: BaseDatabaseWrapper, *, partitioned: bool, ahead: int = MONTHS_AHEAD
) -> None:
    """Rebuild the usage table as a partitioned one (or back as a plain one), in the caller's
    transaction: every row kept with its id, every column with its default, every index and
    constraint under the name Django gave it, the id sequence going on where it was.

    The table is locked ACCESS EXCLUSIVE until the commit: a process of the previous release
    inserting a record meanwhile waits (then writes into the new table), so the swap should
    be quick, and its cost is the copy (README: "Partitions")."""
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        columns = ", ".join(connection.ops.quote_name(c) for c in _columns(cursor, TABLE))
        # Indexes that are not a constraint's own (those come back with their constraint).
        cursor.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)"
            " FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
            [TABLE],
        )
        indexes = [definition.replace(" ON ONLY ", " ON ") for _, definition in cursor.fetchall()]
        # Primary key and unique constraints: their columns, with or without created_at.
        cursor.execute(
            "SELECT k.conname, k.contype, array_agg(a.attname ORDER BY u.n)"
            " FROM pg_constraint k, unnest(k.conkey) WITH ORDINALITY u(attnum, n), pg_attribute a"
            " WHERE k.conrelid = to_regclass(%s) AND k.contype IN ('p', 'u')"
            " AND a.attrelid = k.conrelid AND a.attnum = u.attnum GROUP BY k.conname, k.contype",
            [TABLE],
        )
        keys = cursor.fetchall()
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = to_regclass(%s) AND contype = 'f'",
            [TABLE],
        )
        foreign = cursor.fetchall()
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
        sequence = cursor.fetchone()[0]
        cursor.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
        last_value, is_called = cursor.fetchone()
        next_id = last_value + 1 if is_called else last_value

        old = f"{TABLE}_old"
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)"
            + (" PARTITION BY RANGE (created_at)" if partitioned else "")
        )
        if partitioned:
            cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
            cursor.execute(
                f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') FROM {old}"  # noqa: S608
            )
            months = [m.replace(tzinfo=dt.UTC) for (m,) in cursor.fetchall()]
            start = month_start(timezone.now())
            months.append(start)
            for _ in range(ahead):
                start = next_month(start)
                months.append(start)
            for month in sorted(set(months)):
                _create_month(cursor, month)
        cursor.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {old}")  # noqa: S608
        cursor.execute(f"DROP TABLE {old}")  # and its sequence, its indexes' names

        for definition in indexes:
            cursor.execute(definition)
        for name, kind, key_columns in keys:
            key_columns = [c for c in key_columns if c != "created_at"]
            if partitioned:
                key_columns.append("created_at")
            cursor.execute(
                f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} "
                + ("PRIMARY KEY" if kind == "p" else "UNIQUE")
                + f" ({', '.join(key_columns)})"
            )
        for name, definition in foreign:
            cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")

        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
        new_sequence = cursor.fetchone()[0]
        cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {sequence.split('.')[-1]}")
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id RESTART WITH %s", [next_id])
        cursor.execute(f"ANALYZE {TABLE}")
