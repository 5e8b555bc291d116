"""Accounting under faults, end to end: clients that hang up at every moment, a poison record,
a PostgreSQL restart, a Redis outage, SIGTERM with open streams, `kill -9`, and a mixed run.

Every test ends on the books: exactly one record per authenticated request, each key's and
user's ledger spent exactly the sum of its records' costs, nothing left reserved or pending.
The fake upstream bills on its own (fakeopenai.state), so where the proxy could only estimate,
the test compares its record with what "OpenAI" billed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from decimal import Decimal

import httpx2 as httpx
import openai
import pytest
from django.db.models import F

from tests.e2e import records_for, wait_for
from tests.servers import manage, running, start_proxy

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]


# -- helpers ------------------------------------------------------------------------------------


def assert_books_balance() -> dict:
    """Every ledger row spent exactly the sum of its owner's record costs in its period and
    holds nothing reserved; no record is pending. Returns a few totals for the test's figure."""
    from django.db.models import Q

    from keys.models import QuotaLedger, period_end
    from usage.models import UsageRecord

    assert not UsageRecord.objects.filter(state="pending").exists(), "a reservation is held"
    ledgers = list(QuotaLedger.objects.all())
    for ledger in ledgers:
        owner = Q(api_key_id=ledger.api_key_id) if ledger.api_key_id else Q(user_id=ledger.user_id)
        records = UsageRecord.objects.filter(owner, created_at__gte=ledger.period_start)
        end = period_end(ledger.period, ledger.period_start)
        if end is not None:
            records = records.filter(created_at__lt=end)
        spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
        assert ledger.spent_usd == spent, f"{ledger}: ledger {ledger.spent_usd} != records {spent}"
        assert ledger.reserved_usd == 0 and ledger.reserved_tokens == 0, f"{ledger} holds some"
        assert ledger.tokens == sum(r.prompt_tokens + r.completion_tokens for r in records)
    return {
        "records": UsageRecord.objects.count(),
        "ledgers": len(ledgers),
        "spent": sum((x.spent_usd for x in ledgers if x.api_key_id), Decimal(0)),
    }


def bill_for(e2e, record) -> dict:
    bills = {b["request_id"]: b for b in e2e.upstream.bills()["bills"]}
    return bills[record.upstream_request_id]


def chat_body(**fake: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 200, "fake": fake}


def gives_up(url: str, secret: str, body: dict, seconds: float) -> None:
    """A client that hangs up after `seconds` with no answer (its read timeout)."""
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=seconds)


def slot_is_free(e2e, secret: str) -> None:
    """A key limited to one request at a time can make one now: nothing holds its slot."""
    e2e.client(secret).chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)


# -- clients that leave -------------------------------------------------------------------------


def test_a_client_leaving_before_a_plain_answer_is_billed_what_openai_billed(e2e):
    secret = e2e.key(budget_usd="1", max_concurrent=1)
    # "OpenAI" answers after 0.8 s and reports a prompt the proxy could not have estimated.
    gives_up(
        f"{e2e.proxy.v1}/chat/completions",
        secret,
        chat_body(latency_ms=800, usage_prompt_tokens=1234, completion_tokens=30),
        0.3,
    )
    [record] = records_for(secret, 1)
    bill = bill_for(e2e, record)
    assert bill["outcome"] == "completed"
    assert (record.prompt_tokens, record.completion_tokens) == (1234, bill["completion_tokens"])
    assert record.status_code == 499 and record.client_disconnected and not record.estimated
    assert record.cost_usd > 0
    assert_books_balance()
    slot_is_free(e2e, secret)


def test_a_client_leaving_a_stream_before_its_headers_closes_upstream_and_releases(e2e):
    secret = e2e.key(budget_usd="1", max_concurrent=1)
    gives_up(
        f"{e2e.proxy.v1}/chat/completions",
        secret,
        {**chat_body(latency_ms=1500, completion_tokens=50), "stream": True},
        0.3,
    )
    [record] = records_for(secret, 1)
    assert record.status_code == 499 and record.client_disconnected and record.estimated
    assert record.completion_tokens == 0 and record.prompt_tokens > 0  # its prompt's estimate
    assert record.cost_usd is not None and record.cost_usd > 0  # ... priced, not free
    # The proxy hung up on "OpenAI" at once: it billed the prompt and generated nothing.
    [bill] = wait_for(lambda: e2e.upstream.bills()["bills"], what="the upstream bill")
    assert bill["outcome"] == "client_gone" and bill["completion_tokens"] == 0
    assert_books_balance()
    slot_is_free(e2e, secret)


def test_a_client_leaving_while_its_request_is_granted_is_recorded_and_released(e2e):
    """The client leaves at once: whatever moment that lands in (reservation, upstream call),
    one record, nothing held. Twenty of them, at staggered moments. (A client gone before its
    key was even looked up was never authenticated and leaves no record: the first request
    of a key pays that lookup, so one plain request goes first.)"""
    secret = e2e.key(budget_usd="1", max_concurrent=20)
    client = e2e.client(secret)
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
    for i in range(20):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{e2e.proxy.v1}/chat/completions",
                json=chat_body(latency_ms=300),
                headers={"Authorization": f"Bearer {secret}"},
                timeout=0.001 + i * 0.004,
            )
    records_for(secret, 21)
    assert_books_balance()
    # All twenty concurrency slots came back: twenty requests at once are served.
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(
                lambda _: client.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=1000,
                    messages=HELLO,
                    extra_body={"fake": {"latency_ms": 200}},
                ),
                range(20),
            )
        )
    assert len(answers) == 20


def test_a_slow_readers_hang_up_is_billed_from_what_was_generated(e2e):
    secret = e2e.key(budget_usd="1")
    received = 0
    with httpx.stream(
        "POST",
        f"{e2e.proxy.v1}/chat/completions",
        json={**chat_body(completion_tokens=400, chunk_delay_ms=30), "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
                time.sleep(0.05)  # reads slower than "OpenAI" writes
            if received == 15:
                break
    [record] = records_for(secret, 1)

    def hung_up() -> dict | None:
        bill = bill_for(e2e, record)
        return bill if bill["outcome"] == "client_gone" else None

    bill = wait_for(hung_up, what="upstream to see the hang-up")
    assert record.estimated and record.client_disconnected and record.status_code == 499
    # What the proxy billed is what "OpenAI" generated before the proxy hung up on it (a
    # frame in flight at the moment of the hang-up is the only difference there can be).
    assert 0 < bill["completion_tokens"] < 400
    assert abs(record.completion_tokens - bill["completion_tokens"]) <= 2
    assert_books_balance()


# -- a record the database refuses --------------------------------------------------------------


def test_a_poison_record_among_a_hundred_others_loses_none_of_them(e2e):
    victim = e2e.key("victim", budget_usd="5")
    mallory = e2e.key("mallory")
    client = e2e.client(victim)

    def victim_call(i: int) -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)

    def poison(i: int) -> int:
        # NUL bytes in the path and in the model: PostgreSQL refuses them in text columns.
        headers = {"Authorization": f"Bearer {mallory}"}
        if i % 2:
            return httpx.get(f"{e2e.proxy.v1}/%00models%00", headers=headers).status_code
        body = {"model": "gpt-4o-mini\u0000", "messages": HELLO}
        return httpx.post(
            f"{e2e.proxy.v1}/chat/completions", json=body, headers=headers
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        victims = [pool.submit(victim_call, i) for i in range(100)]
        poisons = [pool.submit(poison, i) for i in range(10)]
        statuses = [p.result() for p in poisons]
        for v in victims:
            v.result()
    assert all(s < 500 for s in statuses), statuses
    records_for(victim, 100)
    bad = records_for(mallory, 10)
    assert all("\x00" not in r.endpoint + r.model for r in bad)
    assert_books_balance()


# -- the database restarts ----------------------------------------------------------------------


def _pg_books(url: str) -> tuple[int, int, Decimal, Decimal, Decimal]:
    """(records, pending, Σ record cost, Σ key-ledger spent, Σ reserved) read directly."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE state = 'pending'),"
            " coalesce(sum(cost_usd), 0) FROM usage_usagerecord"
        )
        records, pending, cost = cur.fetchone()
        cur.execute(
            "SELECT coalesce(sum(spent_usd) FILTER (WHERE api_key_id IS NOT NULL), 0),"
            " coalesce(sum(reserved_usd), 0) FROM keys_quotaledger"
        )
        spent, reserved = cur.fetchone()
    return records, pending, cost, spent, reserved


def _key_on(private_postgres) -> str:
    """Migrate the private cluster, load prices, issue a $50 key on it; returns the key."""
    env = {**os.environ, "DATABASE_URL": private_postgres.url, "SECRET_KEY": "t"}
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "load_prices")
    return manage(env, "create_api_key", "pg-user", "--budget", "50").strip().splitlines()[-1]


def test_a_postgresql_restart_mid_traffic_is_survived_without_a_process_restart(
    private_postgres, fake_openai, server_logs
):
    secret = _key_on(private_postgres)
    proxy = start_proxy(
        fake_openai.url,
        server_logs,
        extra_env={"DATABASE_URL": private_postgres.url, "PROXY_DB_TIMEOUT": "2"},
    )
    results: list[tuple[int, str, float]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(
                        f"{proxy.v1}/chat/completions",
                        json=chat_body(latency_ms=20),
                        headers={"Authorization": f"Bearer {secret}"},
                    )
                    results.append((r.status_code, r.text, time.monotonic() - started))
                except httpx.TransportError as exc:
                    results.append((0, repr(exc), time.monotonic() - started))

    with running(proxy):
        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.5)
        before = len(results)
        private_postgres.stop(mode="fast")
        time.sleep(2)
        during = len(results)
        outage = httpx.get(f"{proxy.url}/readyz", timeout=10)
        me = httpx.get(f"{proxy.v1}/proxy/me", headers={"Authorization": f"Bearer {secret}"})
        private_postgres.start()
        restarted = time.monotonic()
        wait_for(
            lambda: results and results[-1][0] == 200 and len(results) > during + 8,
            timeout=15,
            what="requests to succeed again",
        )
        recovered_in = time.monotonic() - restarted
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join()
        time.sleep(1.5)  # the writer flushes what waited for the database
        assert "Internal Server Error" not in proxy.output()
    statuses = [s for s, _, _ in results]
    assert before > 10 and statuses.count(200) > 20
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    for status, text, took in results:
        if status == 503:
            assert json.loads(text)["error"]["code"] in ("database_unavailable", "database_timeout")
            assert took < 4, "a client waited on the dead database"
    assert outage.status_code == 503 and outage.json()["checks"]["database"].startswith("error")
    assert me.status_code == 503 and me.json()["error"]["code"] == "database_unavailable"
    assert recovered_in < 5
    records, pending, cost, spent, reserved = _pg_books(private_postgres.url)
    assert records == len(results), (records, len(results))
    assert pending == 0 and reserved == 0 and cost == spent
    print(
        f"\nPostgreSQL restart: {len(results)} requests, {statuses.count(503)} got 503, "
        f"0 got 500, relay answering 200 again {recovered_in:.2f} s after the restart"
    )


def test_a_stuck_database_gets_a_quick_503_and_the_late_reservation_is_released(e2e, server_logs):
    from django.db import transaction

    from keys.models import QuotaLedger

    secret = e2e.key(budget_usd="1")
    proxy = start_proxy(e2e.upstream.url, server_logs, extra_env={"PROXY_DB_TIMEOUT": "1"})
    with running(proxy):
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
        records_for(secret, 1)
        # Hold the key's ledger row (on SQLite: the database's write lock) for 2.5 s: the
        # reservation waits behind it.
        with transaction.atomic():
            list(QuotaLedger.objects.select_for_update().filter(api_key__isnull=False))
            QuotaLedger.objects.filter(api_key__isnull=False).update(requests=F("requests"))
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as stuck:
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
            answered_in = time.monotonic() - started
            time.sleep(2.5 - answered_in)
        assert stuck.value.status_code == 503 and answered_in < 2
        records = records_for(secret, 2)
    assert records[1].status_code == 503 and records[1].error_code == "database_timeout"
    assert_books_balance()


def test_after_a_database_outage_no_process_takes_another_for_dead(
    private_postgres, fake_openai, server_logs
):
    """Every heartbeat is old when the database comes back; the reaper waits until the
    processes could beat again, so the live process's requests in flight are not reaped."""
    import psycopg2

    secret = _key_on(private_postgres)
    fast_reaper = {
        "DATABASE_URL": private_postgres.url,
        "PROXY_HEARTBEAT_SECONDS": "0.2",
        "PROXY_REAP_AFTER_SECONDS": "1",
    }
    serving = start_proxy(fake_openai.url, server_logs, extra_env=fast_reaper)
    reaping = start_proxy(fake_openai.url, server_logs, extra_env=fast_reaper)
    with running(serving), running(reaping):
        outcomes, streams = _open_streams(
            serving, secret, 5, {"completion_tokens": 200, "chunk_delay_ms": 50}
        )
        private_postgres.stop(mode="fast")
        time.sleep(2.5)  # longer than PROXY_REAP_AFTER_SECONDS
        private_postgres.start()
        seen: set[str] = set()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                with psycopg2.connect(private_postgres.url) as conn, conn.cursor() as cur:
                    cur.execute("SELECT DISTINCT state FROM usage_usagerecord")
                    seen.update(state for (state,) in cur.fetchall())
            except psycopg2.OperationalError:
                pass
            time.sleep(0.1)
        for t in streams:
            t.join(timeout=15)
        time.sleep(1)
    assert "reaped" not in seen, "a live process's requests were reaped after the outage"
    assert [kind for kind, _ in outcomes] == ["done"] * 5
    records, pending, cost, spent, reserved = _pg_books(private_postgres.url)
    assert (records, pending, reserved) == (5, 0, 0) and cost == spent > 0


# -- Redis goes away ----------------------------------------------------------------------------


def test_a_redis_outage_keeps_budgets_hard(e2e, private_redis, server_logs):
    from usage.pricing import Ceiling, price_book

    price = price_book().price("gpt-4o-mini", time_now())
    worst = price.worst_case_tokens(Ceiling(input=50, output=100))  # one request's, generously
    secret = e2e.key(budget_usd=str(worst * Decimal("3.5")), rpm=1000, max_concurrent=50)
    proxy = start_proxy(e2e.upstream.url, server_logs, extra_env={"CACHE_URL": private_redis.url})
    with running(proxy):
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
        private_redis.stop()

        def call(i: int) -> str:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=HELLO,
                    max_tokens=100,
                    extra_body={"fake": {"latency_ms": 600}},
                )
                return "ok"
            except openai.RateLimitError as exc:
                return exc.code or "429"

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(call, range(10)))
        assert outcomes.count("ok") == 3, outcomes  # what the budget holds, not one more
        assert outcomes.count("insufficient_quota") == 7
        assert "Redis is unreachable" in proxy.output()
        private_redis.start()
        sent = 11

        def back() -> bool:
            nonlocal sent
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
            sent += 1
            return "Redis is back" in proxy.output()

        # Redis is tried again once a second while it is away.
        wait_for(back, timeout=5, what="the proxy to use Redis again")
    records_for(secret, sent)
    assert_books_balance()


def test_a_concurrency_slot_released_while_redis_hangs_comes_back(e2e, private_redis, server_logs):
    secret = e2e.key(max_concurrent=1)
    proxy = start_proxy(e2e.upstream.url, server_logs, extra_env={"CACHE_URL": private_redis.url})
    with running(proxy):
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0, timeout=10)
        slow = threading.Thread(
            target=client.chat.completions.create,
            kwargs={
                "model": "gpt-4o-mini",
                "messages": HELLO,
                "extra_body": {"fake": {"latency_ms": 800}},
            },
        )
        slow.start()  # takes the one slot, in Redis
        time.sleep(0.3)
        os.kill(private_redis.proc.pid, signal.SIGSTOP)  # Redis hangs (its data kept)
        try:
            slow.join()  # its release cannot reach Redis
            time.sleep(0.5)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        time.sleep(1.2)  # Redis is tried again once a second
        # The slot was given back when Redis answered again: not "too many concurrent".
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
    records_for(secret, 2)


def time_now():
    from django.utils import timezone

    return timezone.now()


# -- the server is stopped or killed ------------------------------------------------------------


def _open_streams(proxy, secret: str, n: int, fake: dict) -> tuple[list, threading.Event]:
    """n streaming clients in threads; returns their outcomes (filled when they end) and an
    event set once every one has received its first chunk."""
    outcomes: list = []
    started = threading.Barrier(n + 1)
    client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0, timeout=30)

    def stream() -> None:
        text = ""
        try:
            chunks = client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=1000,
                messages=HELLO,
                stream=True,
                extra_body={"fake": fake},
            )
            first = True
            for chunk in chunks:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
                if first and text:
                    first = False
                    started.wait()
            outcomes.append(("done", text))
        except openai.APIError as exc:
            outcomes.append((type(exc).__name__, exc.message))
        except Exception as exc:  # noqa: BLE001 (a connection reset from a killed server)
            outcomes.append((type(exc).__name__, str(exc)))

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    started.wait(timeout=20)
    return outcomes, threads


def test_sigterm_with_twenty_open_streams_writes_twenty_records(e2e, server_logs):
    secret = e2e.key(budget_usd="5")
    proxy = start_proxy(
        e2e.upstream.url, server_logs, extra_env={"PROXY_SHUTDOWN_GRACE_SECONDS": "1"}
    )
    outcomes, threads = _open_streams(
        proxy, secret, 20, {"completion_tokens": 400, "chunk_delay_ms": 50}
    )
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(timeout=20)
    exited_in = time.monotonic() - signalled
    for t in threads:
        t.join(timeout=10)
    # Every client was told its stream was cut short by a restart (an error its SDK raises).
    assert len(outcomes) == 20
    assert all(kind == "APIError" and "restarting" in message for kind, message in outcomes)
    records = records_for(secret, 20)
    assert all(r.error_code == "proxy_shutdown" and r.estimated for r in records)
    assert all(0 < r.completion_tokens < 400 for r in records)
    assert_books_balance()
    assert exited_in < 10
    print(f"\nSIGTERM: 20 open streams, 20 records, process gone {exited_in:.1f} s later")


def _kill_mid_traffic(e2e, server_logs, reap_env: dict) -> tuple[str, int]:
    """Start a proxy, put 10 streams and 10 slow plain requests in flight on it, kill -9 it.
    Returns the key and how many requests it had granted (pending rows left behind)."""
    from usage.models import UsageRecord

    secret = e2e.key(budget_usd="5")
    proxy = start_proxy(e2e.upstream.url, server_logs, extra_env=reap_env)
    try:
        _outcomes, streams = _open_streams(
            proxy, secret, 10, {"completion_tokens": 400, "chunk_delay_ms": 50}
        )
        plain = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0, timeout=30)
        slow = [
            threading.Thread(
                target=lambda: _quietly(
                    plain.chat.completions.create,
                    model="gpt-4o-mini",
                    max_tokens=1000,
                    messages=HELLO,
                    extra_body={"fake": {"latency_ms": 5000}},
                ),
                daemon=True,
            )
            for _ in range(10)
        ]
        for t in slow:
            t.start()
        wait_for(
            lambda: UsageRecord.objects.filter(state="pending").count() == 20,
            what="20 requests in flight",
        )
        proxy.proc.kill()
        proxy.proc.wait()
        for t in [*streams, *slow]:
            t.join(timeout=10)
    finally:
        if proxy.proc.poll() is None:  # failed before the kill: never leave it running
            proxy.proc.kill()
            proxy.proc.wait()
    return secret, UsageRecord.objects.filter(state="pending").count()


def _quietly(fn, **kwargs) -> None:
    try:
        fn(**kwargs)
    except Exception:  # noqa: BLE001 (the server is killed under it)
        pass


def test_kill_9_mid_traffic_is_healed_by_another_processes_reaper(e2e, server_logs):
    reap = {"PROXY_HEARTBEAT_SECONDS": "0.2", "PROXY_REAP_AFTER_SECONDS": "1.5"}
    secret, pending = _kill_mid_traffic(e2e, server_logs, reap)
    assert pending == 20  # every granted request is durable from its reservation on
    healer = start_proxy(e2e.upstream.url, server_logs, extra_env=reap)
    with running(healer):
        started = time.monotonic()
        records = records_for(secret, 20, timeout=15)
        healed_in = time.monotonic() - started
    assert all(r.state == "reaped" and r.error_code == "proxy_died" for r in records)
    assert all(r.estimated and r.cost_usd > 0 and r.completion_tokens == 0 for r in records)
    assert_books_balance()
    print(f"\nkill -9: 20 requests in flight, 20 healed {healed_in:.1f} s after a new process")


def test_kill_9_is_healed_by_the_reap_command_with_no_relay_running(e2e, server_logs):
    secret, pending = _kill_mid_traffic(e2e, server_logs, {"PROXY_HEARTBEAT_SECONDS": "0.2"})
    assert pending == 20
    env = {**os.environ, "DATABASE_URL": _database_url(), "SECRET_KEY": "t"}
    time.sleep(1)
    out = manage(env, "reap_reservations", "--stale-seconds", "0.5")
    assert out.startswith("ended 20 reservations"), out
    records = records_for(secret, 20)
    assert all(r.state == "reaped" for r in records)
    assert_books_balance()


def _database_url() -> str:
    from tests.servers import database_url

    return database_url()


# -- everything at once -------------------------------------------------------------------------


def test_a_fault_run_of_mixed_requests_leaves_exactly_one_record_each(e2e):
    """300 requests, 30 at a time: plain, streamed, upstream errors, cut and short streams,
    clients that give up and that hang up mid-stream. Exactly N records; the books balance;
    every record that is not an estimate carries exactly the usage "OpenAI" billed."""
    secret = e2e.key(budget_usd="20", max_concurrent=40)
    client = e2e.client(secret, timeout=10)
    url = f"{e2e.proxy.v1}/chat/completions"
    auth = {"Authorization": f"Bearer {secret}"}

    def one(i: int) -> str:
        kind = i % 8
        try:
            if kind == 0:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=1000,
                    messages=HELLO,
                    extra_body={"fake": {"usage_prompt_tokens": 77 + i}},
                )
            elif kind == 1:
                for _ in client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=1000, messages=HELLO, stream=True
                ):
                    pass
            elif kind == 2:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=1000,
                    messages=HELLO,
                    extra_body={"fake": {"fail_status": 500 if i % 16 < 8 else 429}},
                )
            elif kind in (3, 4):
                broken = "cut_after" if kind == 3 else "end_early_after"
                for _ in client.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=1000,
                    messages=HELLO,
                    stream=True,
                    extra_body={"fake": {"completion_tokens": 40, broken: 5}},
                ):
                    pass
            elif kind == 5:
                httpx.post(url, json=chat_body(latency_ms=400), headers=auth, timeout=0.1)
            elif kind == 6:
                body = {**chat_body(completion_tokens=300, chunk_delay_ms=10), "stream": True}
                with httpx.stream("POST", url, json=body, headers=auth, timeout=10) as r:
                    for n, _ in enumerate(r.iter_lines()):
                        if n > 10:
                            break
            else:
                client.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=50)
            return "ok"
        except (openai.APIError, httpx.HTTPError) as exc:
            return type(exc).__name__

    n = 300
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        list(pool.map(one, range(n)))
    records = records_for(secret, n, timeout=20)
    bills = {b["request_id"]: b for b in e2e.upstream.bills()["bills"]}
    exact = [r for r in records if not r.estimated and r.upstream_request_id in bills]
    for record in exact:
        bill = bills[record.upstream_request_id]
        assert (record.prompt_tokens, record.completion_tokens) == (
            bill["prompt_tokens"],
            bill["completion_tokens"],
        ), record
    totals = assert_books_balance()
    assert len(exact) > n / 3
    print(
        f"\nfault run: {n} requests, {len(records)} records, {len(exact)} exactly as billed "
        f"upstream, ledger ${totals['spent']} = Σ records, nothing reserved"
    )


# -- logs ---------------------------------------------------------------------------------------


def test_no_proxy_key_in_the_log_when_upstream_fails_with_the_key_in_the_url(e2e):
    secret = e2e.key()
    client = openai.OpenAI(api_key="x", base_url=f"{e2e.proxy.url}/{secret}/v1", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            extra_body={"fake": {"fail_status": 500}},
        )
    records_for(secret, 1)
    assert secret not in e2e.proxy.output()
    assert secret[len("sk-proxy-") :][:12] not in e2e.proxy.output()
