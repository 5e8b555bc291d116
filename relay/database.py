"""The one path the relay's database work takes: its own threads, with connection hygiene.

The ORM is synchronous, so the relay runs its queries in worker threads, in two lanes:

- the request path (`in_db_thread`): key lookups, the quota reservation, /v1/proxy/me,
  /readyz — what a client is waiting for;
- the background (`in_writer_thread`): the batched usage-record writes, the heartbeat and
  the reaper — what no client waits for.

A request never waits behind a record write. On PostgreSQL each lane has its own threads and
connections (8 for the request path, one writer). SQLite takes one writer at a time, and a
writer that finds the file locked sleeps in steps of milliseconds, so on SQLite both lanes
share one thread that never waits on a lock and always takes the request path's work first:
a reservation waits at most for the one writer batch already running, which the writer keeps
small on SQLite (relay.recording).

A database restart leaves every thread's connection dead. The first thread to see a
connection fail closes its own and bumps a generation number; every other thread closes its
connection before its next query when it sees the number changed. So a restart costs the
queries in flight, not one failed request per thread, and the relay recovers by itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")
# What a database that is down, restarting or unreachable raises (psycopg2 and sqlite3 alike).
UNAVAILABLE = (OperationalError, InterfaceError)
# One database thread for both lanes, a small writer batch, reservations made together.
ON_SQLITE = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
_generation = 0
_local = threading.local()
# When the request lane last finished a piece of work (monotonic seconds).
_last_answer = time.monotonic()


class _OneThread:
    """SQLite's one database thread, with two queues: the request path's work first."""

    def __init__(self) -> None:
        self._urgent: collections.deque = collections.deque()
        self._background: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], T], *, urgent: bool) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            (self._urgent if urgent else self._background).append((future, job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relay-db", daemon=True)
                self._thread.start()
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not (self._urgent or self._background):
                    self._ready.wait()
                future, job = (self._urgent or self._background).popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting coroutine)
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, job


class _Lanes:
    def __init__(self) -> None:
        if ON_SQLITE:
            one = _OneThread()
            self.request = functools.partial(one.submit, urgent=True)
            self.background = functools.partial(one.submit, urgent=False)
        else:
            self.request = ThreadPoolExecutor(max_workers=8, thread_name_prefix="relay-db").submit
            self.background = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="relay-writer"
            ).submit


_lanes: _Lanes | None = None


def _get_lanes() -> _Lanes:
    global _lanes
    if _lanes is None:
        _lanes = _Lanes()
    return _lanes


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


def _answered(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    global _last_answer
    try:
        return _fresh(fn, *args, **kwargs)
    finally:
        _last_answer = time.monotonic()


def answering(*, within: float) -> bool:
    """Whether the request lane finished some work in the last `within` seconds. A request
    still waiting for its database work then waits behind other requests' work (load), not
    on a database that is stuck or unreachable."""
    return time.monotonic() - _last_answer < within


def in_db_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> asyncio.Future[T]:
    """Run `fn` in a request-path database thread. Returns a future: a caller that stops
    waiting (it timed out, or its request was cancelled) can still see how the work ended."""
    job = functools.partial(_answered, fn, *args, **kwargs)
    return asyncio.wrap_future(_get_lanes().request(job))


def in_writer_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> asyncio.Future[T]:
    """Run `fn` in the background lane (record writes, heartbeat, reaper): never ahead of,
    nor in the way of, a request's own database work."""
    job = functools.partial(_fresh, fn, *args, **kwargs)
    return asyncio.wrap_future(_get_lanes().background(job))
