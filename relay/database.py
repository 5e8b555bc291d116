"""The one path the relay's database work takes: its own threads, with connection hygiene.

The ORM is synchronous, so the relay runs its queries — key lookups, the quota reservation,
the batched usage-record writes, /v1/proxy/me and /readyz — in worker threads. SQLite takes
one writer at a time and a writer that finds the file locked sleeps in steps of
milliseconds, so on SQLite all of it goes through one thread, in order, and never waits on a
lock; other databases get a small pool, each thread keeping its connection.

A database restart leaves every thread's connection dead. The first thread to see a
connection fail closes its own and bumps a generation number; every other thread closes its
connection before its next query when it sees the number changed. So a restart costs the
queries in flight, not one failed request per thread, and the relay recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")
# What a database that is down, restarting or unreachable raises (psycopg2 and sqlite3 alike).
UNAVAILABLE = (OperationalError, InterfaceError)
_executor: ThreadPoolExecutor | None = None
_generation = 0
_local = threading.local()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        workers = 1 if connection.vendor == "sqlite" else 8
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relay-db")
    return _executor


def _close_quietly() -> None:
    with contextlib.suppress(Exception):
        connection.close()


def _fresh(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    global _generation
    # What Django does around each request, but only when there is something to do (its
    # health check would cost a round trip per call): drop a connection that failed, outlived
    # CONN_MAX_AGE, or predates a failure another thread saw.
    if connection.connection is not None:
        if getattr(_local, "generation", _generation) != _generation:
            _close_quietly()
        elif connection.errors_occurred or (
            connection.close_at is not None and time.monotonic() >= connection.close_at
        ):
            connection.close_if_unusable_or_obsolete()
    _local.generation = _generation
    try:
        return fn(*args, **kwargs)
    except UNAVAILABLE:
        if not connection.in_atomic_block:
            _generation += 1
            _local.generation = _generation
            _close_quietly()
        raise


def in_db_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> asyncio.Future[T]:
    """Run `fn` in a database thread. Returns a future: a caller that stops waiting (it timed
    out, or its request was cancelled) can still see how the work ended."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(_pool(), functools.partial(_fresh, fn, *args, **kwargs))
