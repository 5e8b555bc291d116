"""A relay process's life: start-up, its heartbeat and reaper, draining on SIGTERM, shut-down.

- Every process has a token; the pending usage rows it writes with its reservations carry it,
  and it says it is alive every PROXY_HEARTBEAT_SECONDS. Each process also runs the reaper:
  the reservations of a process not seen for PROXY_REAP_AFTER_SECONDS are ended (billed at
  their estimate, the rest released; usage.services.usage_records_reap).
- SIGTERM (or SIGINT) starts draining: requests in flight go on; streams still open after
  PROXY_SHUTDOWN_GRACE_SECONDS are closed upstream, end with an error event for the client
  and are recorded as interrupted. Then the lifespan shutdown writes every queued record.
- Every process also polls OpenAI for the batches that ended (relay.batches), which settles
  their reservations; a batch's reservation is never the reaper's.
- Every process also sends the budget alerts and expiry warnings due (alerts.delivery).
- Work that outlives its request (a non-streamed answer read after the client left) runs as
  a tracked task, so shutdown waits for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Coroutine
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from relay import recording, upstream
from relay.database import in_db_thread, in_writer_thread
from relay.tokens import count_text, install_encodings

log = logging.getLogger(__name__)

TOKEN = uuid.uuid4().hex
_STARTED_AT = timezone.now()


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


_tasks: set[asyncio.Task] = set()
open_streams: set[Interruptible] = set()
_registered = False
_register_lock: asyncio.Lock | None = None
_beat_task: asyncio.Task | None = None
_poll_task: asyncio.Task | None = None  # relay.batches.poll_forever
_alert_task: asyncio.Task | None = None  # alerts.delivery.deliver_forever
_draining = False


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run work that must finish even if the request that started it is cancelled."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


# -- liveness -----------------------------------------------------------------------------------


def _beat() -> None:
    from keys.services import relay_process_beat
    from usage.partitions import partitions_keep_ahead

    partitions_keep_ahead()  # at start, then hourly: next months' partitions of the usage table

    relay_process_beat(
        token=TOKEN, hostname=socket.gethostname(), pid=os.getpid(), started_at=_STARTED_AT
    )


def registered() -> bool:
    return _registered


async def ensure_registered() -> None:
    """Before this process's first reservation: its token must be in the registry, or another
    process's reaper would take the reservation for a dead process's."""
    global _registered, _register_lock, _beat_task, _poll_task, _alert_task
    if _registered:
        return
    if _register_lock is None:
        _register_lock = asyncio.Lock()
    async with _register_lock:
        if not _registered:
            await in_db_thread(_beat)
            _registered = True
    if _beat_task is None or _beat_task.done():
        _beat_task = asyncio.get_running_loop().create_task(_beat_and_reap())
    if _poll_task is None or _poll_task.done():
        from relay.batches import poll_forever  # it builds on the relay's views

        _poll_task = asyncio.get_running_loop().create_task(poll_forever())
    if _alert_task is None or _alert_task.done():
        from alerts.delivery import deliver_forever

        _alert_task = asyncio.get_running_loop().create_task(deliver_forever(token=TOKEN))


def _reap() -> None:
    from usage.services import reservations_heal

    reservations_heal(
        stale_after=dt.timedelta(seconds=settings.PROXY_REAP_AFTER_SECONDS), keep=(TOKEN,)
    )


async def _beat_and_reap() -> None:
    # The reaper only trusts the heartbeats it reads once this process has itself reached the
    # database for a whole PROXY_REAP_AFTER_SECONDS: after a database outage every process's
    # last beat is old, and none may take the others for dead before they could beat again.
    healthy_since: float | None = None
    while True:
        await asyncio.sleep(settings.PROXY_HEARTBEAT_SECONDS)
        try:
            await in_writer_thread(_beat)
            now = time.monotonic()
            healthy_since = healthy_since or now
            if now - healthy_since >= settings.PROXY_REAP_AFTER_SECONDS:
                await in_writer_thread(_reap)
        except Exception as exc:  # noqa: BLE001 (the database is away: try again next beat)
            healthy_since = None
            log.warning("heartbeat failed (%s); trying again", type(exc).__name__)


# -- start and stop -----------------------------------------------------------------------------


def _watch_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Start draining on SIGTERM/SIGINT, then let the server's own handler run as before."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def on_signal(sig: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(begin_drain)
            if callable(previous):
                previous(sig, frame)

        try:
            signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (an embedded server): no signals to watch
            return


def begin_drain() -> None:
    global _draining
    if _draining:
        return
    _draining = True
    grace = settings.PROXY_SHUTDOWN_GRACE_SECONDS
    log.warning("draining: %d open streams get %s s to finish", len(open_streams), grace)
    asyncio.get_running_loop().call_later(grace, interrupt_streams)


def interrupt_streams() -> None:
    if open_streams:
        log.warning("closing %d streams still open after the grace period", len(open_streams))
    for stream in list(open_streams):
        stream.interrupt()


async def startup() -> None:
    # Unpack tiktoken's encodings and load both (about a second) before the first request
    # needs them, instead of during it. Never a download.
    await sync_to_async(install_encodings, thread_sensitive=False)()
    for model in ("gpt-4o", "gpt-4"):
        await sync_to_async(count_text, thread_sensitive=False)("warm up", model)
    _watch_signals(asyncio.get_running_loop())
    from relay import metrics  # it counts what this module holds (open streams)

    metrics.start()
    try:
        await asyncio.wait_for(ensure_registered(), timeout=settings.PROXY_DB_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 (serve anyway: requests get 503 until it is back)
        log.error("database unreachable at start (%s); registering later", type(exc).__name__)


async def shutdown() -> None:
    interrupt_streams()
    if _tasks:
        await asyncio.wait(list(_tasks), timeout=settings.PROXY_SHUTDOWN_GRACE_SECONDS)
    try:
        await asyncio.wait_for(recording.drain(), timeout=30)
    except TimeoutError:
        log.error("shutdown: %d usage records still unwritten after 30 s", recording.pending())
    for task in (_beat_task, _poll_task, _alert_task):
        if task is not None:
            task.cancel()
    if _registered and not recording.pending():
        # Every record is written, so nothing of ours is pending: leave the registry. (If
        # records are left unwritten, the row stays and the reaper ends them later.)
        try:
            from keys.services import relay_process_leave

            await in_db_thread(relay_process_leave, token=TOKEN)
        except Exception:  # noqa: BLE001
            log.warning("could not leave the process registry; the reaper will tidy up")
    await upstream.close()
    from relay import metrics

    metrics.stop()
