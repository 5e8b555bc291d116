"""The threads the relay's database work runs in.

The ORM is synchronous, so the relay runs its two kinds of query — the quota reservation on
the request path and the batched usage-record writes after it — in worker threads. SQLite
takes one writer at a time and a writer that finds the file locked sleeps in steps of
milliseconds, so on SQLite all of it goes through one thread, in order, and never waits on a
lock; other databases get a small pool, each thread keeping its connection.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import connection

T = TypeVar("T")
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        workers = 1 if connection.vendor == "sqlite" else 8
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relay-db")
    return _executor


def _fresh(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    # What Django does around each request, but only when there is something to do (its
    # health check would cost a round trip per call): drop a connection that failed or
    # outlived CONN_MAX_AGE, so a database restart costs one failed request, not every later one.
    if connection.connection is not None and (
        connection.errors_occurred
        or (connection.close_at is not None and time.monotonic() >= connection.close_at)
    ):
        connection.close_if_unusable_or_obsolete()
    return fn(*args, **kwargs)


async def in_db_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(_fresh, fn, *args, **kwargs))
