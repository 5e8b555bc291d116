"""Writing usage records off the response path, in batches, never losing one.

A finished request hands its record to this process's writer and the client has its answer
at once. The writer takes every record that is waiting and writes them in one transaction
(completing the pending rows written with the reservations, settling the ledgers, adding the
rollups), so under load a thousand requests a second cost twenty transactions, not a
thousand.

- The database is away: the batch waits and is written when it is back (the transaction
  rolled back whole, and completing a row twice is a no-op, so nothing is lost or doubled).
- The database refuses the batch (a NUL byte, a number out of range): the batch is split
  down to the record, so one bad record never takes the others with it. A record that still
  fails is sanitised and tried again; one that fails even then is appended to
  USAGE_UNWRITABLE_FILE, logged, and its reservation ended at its estimate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import models

from relay.database import ON_SQLITE, UNAVAILABLE, in_writer_thread
from usage.models import UsageRecord
from usage.services import usage_record_release, usage_records_write

log = logging.getLogger(__name__)
GATHER_SECONDS = 0.05


# On SQLite the writer shares the request path's one database thread (relay.database): a
# small batch is all a reservation that arrives meanwhile can wait behind.
BATCH = 32 if ON_SQLITE else 500
_queue: list[tuple[UsageRecord, asyncio.Future]] = []
_wakeup: asyncio.Event | None = None
_writer: asyncio.Task | None = None


@dataclasses.dataclass
class _Outcome:
    written: int = 0
    unwritable: int = 0


def storable(text: str) -> str:
    """Text any database accepts: PostgreSQL refuses NUL characters in text."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _sanitised(record: UsageRecord) -> None:
    for field in record._meta.concrete_fields:
        value = getattr(record, field.attname)
        if isinstance(value, str):
            value = storable(value)
            if field.max_length:
                value = value[: field.max_length]
            setattr(record, field.attname, value)
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (field.primary_key or field.is_relation or field.attname.endswith("_id"))
        ):
            # Counts only: an id clamped would be another row's id (another tenant's key).
            if isinstance(field, models.SmallIntegerField):
                ceiling = 2**15 - 1
            elif isinstance(field, models.BigIntegerField):
                ceiling = 2**63 - 1
            else:
                ceiling = 2**31 - 1
            setattr(record, field.attname, max(0, min(value, ceiling)))


def _set_aside(record: UsageRecord, error: Exception) -> None:
    """Keep a record the database would not take, where an operator can find it."""
    row = {}
    for field in record._meta.concrete_fields:
        value = getattr(record, field.attname)
        if isinstance(value, dt.datetime | Decimal):
            value = str(value)
        row[field.attname] = value
    row["error"] = f"{type(error).__name__}: {error}"[:500]
    path = Path(settings.USAGE_UNWRITABLE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def _write_alone(record: UsageRecord, outcome: _Outcome) -> None:
    try:
        _sanitised(record)
        usage_records_write(records=[record])
        outcome.written += 1
        return
    except UNAVAILABLE:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever the database refused, keep the rest)
        error = exc
    outcome.unwritable += 1
    log.error(
        "usage record of key %s could not be written (%s); kept in %s",
        record.key_prefix,
        type(error).__name__,
        settings.USAGE_UNWRITABLE_FILE,
    )
    try:
        _set_aside(record, error)
    except OSError:
        log.exception("the unwritable record could not be kept in a file either")
    if record.pk is not None:
        try:
            usage_record_release(
                record_id=record.pk, error_code="record_unwritable", status_code=record.status_code
            )
        except UNAVAILABLE:
            raise
        except Exception:  # kept in the file; the reaper ends it at the next restart
            log.exception("the reservation of an unwritable record could not be ended")


def _write(records: list[UsageRecord], outcome: _Outcome) -> None:
    """Write a batch; split it when the database refuses it, down to the one record at fault.
    A database that is away raises, and the caller tries the batch again later."""
    try:
        outcome.written += usage_records_write(records=records)
    except UNAVAILABLE:
        raise
    except Exception:  # noqa: BLE001 (a record the database refuses: find it)
        if len(records) == 1:
            _write_alone(records[0], outcome)
            return
        half = len(records) // 2
        _write(records[:half], outcome)
        _write(records[half:], outcome)


def write_now(records: list[UsageRecord]) -> _Outcome:
    """Write records in this thread (the writer's job; also for commands and tests)."""
    outcome = _Outcome()
    _write(records, outcome)
    return outcome


async def _write_forever() -> None:
    assert _wakeup is not None
    failures = 0
    while True:
        await _wakeup.wait()
        # Gather what finishes in the next moment: one transaction for many records costs a
        # fraction of one each, and keeps the database thread from interleaving a write with
        # every request (the records are there a few tens of milliseconds later).
        if len(_queue) < BATCH:
            await asyncio.sleep(GATHER_SECONDS)
        _wakeup.clear()
        while _queue:
            batch = _queue[:BATCH]
            try:
                await in_writer_thread(write_now, [record for record, _ in batch])
            except UNAVAILABLE:
                # The database is away: keep the records (a lost one is free usage and a
                # reservation held) and try again, less often the longer it lasts.
                failures += 1
                log.warning("usage records not written yet (%d waiting); retrying", len(_queue))
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            except Exception:  # a bug, not the data: keep the records and try again later
                failures += 1
                log.exception("usage record writer failed; retrying")
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            failures = 0
            del _queue[: len(batch)]
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


def record_later(record: UsageRecord) -> None:
    global _wakeup, _writer
    loop = asyncio.get_running_loop()
    if _writer is None or _writer.done() or _writer.get_loop() is not loop:
        _wakeup = asyncio.Event()
        _writer = loop.create_task(_write_forever())
    _queue.append((record, loop.create_future()))
    assert _wakeup is not None
    _wakeup.set()


async def flushed(*, timeout: float) -> bool:
    """Wait until the records queued now are written. False if there were none."""
    futures = [done for _, done in _queue]
    if not futures:
        return False
    await asyncio.wait(futures, timeout=timeout)
    return True


def pending() -> int:
    return len(_queue)


async def drain() -> None:
    futures = [done for _, done in _queue]
    if futures:
        await asyncio.wait(futures)
