"""The relay's two database lanes: a request's own database work (its reservation) never
waits behind record writes queued before it (relay.database)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import connection

from relay import database


@pytest.fixture
def fresh_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_lanes", None)


def _order_of_work(background_jobs: int) -> tuple[list[str], float]:
    done: list[str] = []
    started = threading.Event()

    def write(name: str) -> None:
        started.set()
        time.sleep(0.15)
        done.append(name)

    def reserve() -> None:
        done.append("reservation")

    async def scenario() -> float:
        writes = [database.in_writer_thread(write, f"batch {i}") for i in range(background_jobs)]
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        begun = time.monotonic()
        await database.in_db_thread(reserve)
        waited = time.monotonic() - begun
        await asyncio.gather(*writes)
        return waited

    return done, asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_reservation_goes_ahead_of_the_record_writes_queued_before_it(fresh_lanes):
    done, waited = _order_of_work(background_jobs=4)
    if connection.vendor == "sqlite":
        # One thread, never waiting on the file lock: the batch already running finishes,
        # the three queued after it wait for the reservation.
        assert done == ["batch 0", "reservation", "batch 1", "batch 2", "batch 3"]
        assert waited < 0.45  # one batch, not four (0.6 s)
    else:
        # Separate threads and connections: the reservation does not wait for the writer.
        assert done[0] == "reservation"
        assert waited < 0.1


@pytest.mark.django_db(transaction=True)
def test_each_lane_keeps_its_own_connection_healthy(fresh_lanes):
    from django.db import connection as conn

    def ask() -> int:
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                return cursor.fetchone()[0]
        finally:
            conn.close()  # or the test database could not be dropped

    async def both() -> list[int]:
        return await asyncio.gather(database.in_db_thread(ask), database.in_writer_thread(ask))

    assert asyncio.run(both()) == [1, 1]


# -- how long a reservation waits (relay.admission._waited) -----------------------------------


def _wait_for_slow_answer(monkeypatch, *, database_keeps_answering: bool) -> str:
    from django.conf import settings

    from relay import admission

    monkeypatch.setattr(settings, "PROXY_DB_TIMEOUT", 0.2)

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        reservation = loop.create_future()
        loop.call_later(0.7, reservation.set_result, "granted")

        async def others_work() -> None:  # other requests' reservations, answered meanwhile
            while not reservation.done():
                await database.in_db_thread(lambda: None)
                await asyncio.sleep(0.05)

        busy = loop.create_task(others_work()) if database_keeps_answering else None
        try:
            return await admission._waited(reservation)
        except TimeoutError:
            return "503"
        finally:
            if busy is not None:
                await busy

    monkeypatch.setattr(database, "_last_answer", time.monotonic() - 60)
    return asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_reservation_queued_behind_others_waits_while_the_database_answers(
    fresh_lanes, monkeypatch
):
    # A burst of 2,000 streams at once had 268 answered 503 database_timeout while the
    # database was answering every batch: their reservations were only queued.
    assert _wait_for_slow_answer(monkeypatch, database_keeps_answering=True) == "granted"


@pytest.mark.django_db(transaction=True)
def test_a_reservation_on_a_database_that_answers_nothing_gets_503_in_time(
    fresh_lanes, monkeypatch
):
    assert _wait_for_slow_answer(monkeypatch, database_keeps_answering=False) == "503"
