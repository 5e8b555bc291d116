"""Writing usage records off the response path, in batches.

A finished request hands its record to this process's writer and the client has its answer
at once. The writer takes every record that is waiting and writes them in one transaction
(with their ledger settlements and rollups), so the database write adds nothing to the
latency a user sees, and under load a thousand requests a second cost twenty transactions, not
a thousand. If the database is away the records wait and are written when it is back; shutdown
waits for what is queued.
"""

from __future__ import annotations

import asyncio
import logging

from django.db import OperationalError, close_old_connections

from keys.services import Reservation
from relay.database import in_db_thread
from usage.models import UsageRecord
from usage.services import usage_records_create

log = logging.getLogger(__name__)
BATCH = 500
GATHER_SECONDS = 0.05

Item = tuple[Reservation | None, UsageRecord]
_queue: list[tuple[Reservation | None, UsageRecord, asyncio.Future]] = []
_wakeup: asyncio.Event | None = None
_writer: asyncio.Task | None = None
_by_key: dict[int | None, set[asyncio.Future]] = {}


def _write(items: list[Item]) -> None:
    try:
        usage_records_create(items=items)
    except OperationalError:
        # A dropped connection, a busy SQLite file or a deadlock victim: the transaction rolled
        # back whole, so writing the same batch again can neither lose nor double a record.
        close_old_connections()
        raise


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
                await in_db_thread(
                    _write, [(reservation, record) for reservation, record, _ in batch]
                )
            except OperationalError:
                # The database is away: keep the records (a lost one is free usage and a
                # reservation held forever) and try again, less often the longer it lasts.
                failures += 1
                log.warning("usage records not written yet (%d waiting); retrying", len(_queue))
                await asyncio.sleep(min(0.05 * 2**failures, 5.0))
                continue
            except Exception:
                # Not the database being away but these records (a bug): don't retry forever.
                log.exception("%d usage records could not be written", len(batch))
            failures = 0
            del _queue[: len(batch)]
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)


def _forget(key_id: int | None, done: asyncio.Future) -> None:
    futures = _by_key.get(key_id)
    if futures is not None:
        futures.discard(done)
        if not futures:
            del _by_key[key_id]


def record_later(reservation: Reservation | None, record: UsageRecord) -> None:
    global _wakeup, _writer
    loop = asyncio.get_running_loop()
    if _writer is None or _writer.done() or _writer.get_loop() is not loop:
        _wakeup = asyncio.Event()
        _writer = loop.create_task(_write_forever())
    done = loop.create_future()
    _queue.append((reservation, record, done))
    _by_key.setdefault(record.api_key_id, set()).add(done)
    done.add_done_callback(lambda d: _forget(record.api_key_id, d))
    assert _wakeup is not None
    _wakeup.set()


async def settled(key_id: int, *, timeout: float) -> bool:
    """Wait until this process has written the records (and so settled the reservations) of a
    key that are queued now. False if there were none to wait for."""
    futures = list(_by_key.get(key_id, ()))
    if not futures:
        return False
    await asyncio.wait(futures, timeout=timeout)
    return True


def pending() -> int:
    return len(_queue)


async def drain() -> None:
    futures = [done for *_, done in _queue]
    for key_futures in _by_key.values():
        futures.extend(key_futures)
    if futures:
        await asyncio.wait(futures)
