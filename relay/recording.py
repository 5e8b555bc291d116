"""Writing usage records off the response path.

A record is written after the client has its answer, in a task the process keeps track of,
so the database write adds nothing to the latency a user sees and shutdown can wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.db import OperationalError, close_old_connections

from keys.services import Reservation
from usage.models import UsageRecord
from usage.services import usage_record_create

log = logging.getLogger(__name__)
_tasks: set[asyncio.Task] = set()
_by_key: dict[int | None, set[asyncio.Task]] = {}


def _write(reservation: Reservation | None, record: UsageRecord) -> None:
    for attempt in range(5):
        try:
            usage_record_create(reservation=reservation, record=record)
            return
        except OperationalError:
            # A dropped connection or a busy SQLite file: reconnect and try again, since a
            # lost record would be free usage and a reservation held forever.
            close_old_connections()
            if attempt == 4:
                raise
            time.sleep(0.05 * 2**attempt)


_write_async = sync_to_async(_write, thread_sensitive=False)


async def _run(reservation: Reservation | None, record: UsageRecord) -> None:
    try:
        await _write_async(reservation, record)
    except Exception:
        log.exception("usage record for %s %s could not be written", record.key_prefix, record.endpoint)


def record_later(reservation: Reservation | None, record: UsageRecord) -> None:
    task = asyncio.get_running_loop().create_task(_run(reservation, record))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    if reservation is not None:
        by_key = _by_key.setdefault(record.api_key_id, set())
        by_key.add(task)
        task.add_done_callback(lambda t: _forget(record.api_key_id, t))


def _forget(key_id: int | None, task: asyncio.Task) -> None:
    tasks = _by_key.get(key_id)
    if tasks is not None:
        tasks.discard(task)
        if not tasks:
            del _by_key[key_id]


async def settled(key_id: int, *, timeout: float) -> bool:
    """Wait until this process has written the records (and so settled the reservations) it
    holds for a key. False if there were none to wait for."""
    tasks = list(_by_key.get(key_id, ()))
    if not tasks:
        return False
    await asyncio.wait(tasks, timeout=timeout)
    return True


def pending() -> int:
    return len(_tasks)


async def drain() -> None:
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)
