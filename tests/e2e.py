"""Helpers for end-to-end tests: keys in the committed test database, SDK clients, records."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.servers import FakeOpenAI, ProxyServer, running, start_proxy

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def records_for(secret: str, count: int, *, timeout: float = 10.0) -> list:
    """The usage records of a key, once there are `count` of them (they are written just
    after the response), asserting there are never more."""
    from keys.models import key_hash
    from usage.models import UsageRecord

    def ready() -> list | None:
        rows = list(
            UsageRecord.objects.completed()
            .filter(api_key__key_hash=key_hash(secret))
            .order_by("created_at", "id")
        )
        return rows if len(rows) >= count else None

    rows = wait_for(ready, timeout=timeout, what=f"{count} usage records")
    time.sleep(0.2)  # a duplicate record would show up now
    # In the order the requests came in (a granted request's row is written when it is
    # granted, a refused one's after it is answered, so ids are not that order).
    rows = list(
        UsageRecord.objects.filter(api_key__key_hash=key_hash(secret)).order_by("created_at", "id")
    )
    assert all(row.state != "pending" for row in rows), "a record is still pending"
    assert len(rows) == count, f"expected exactly {count} records, found {len(rows)}"
    return rows


@dataclasses.dataclass
class E2E:
    proxy: ProxyServer
    upstream: FakeOpenAI

    def key(self, username: str = "alice", **limits: object) -> str:
        from keys.services import key_issue, user_limit_set

        user_limits = limits.pop("user_limits", None)
        if "budget_usd" in limits and limits["budget_usd"] is not None:
            limits["budget_usd"] = Decimal(str(limits["budget_usd"]))
        api_key, secret = key_issue(username=username, **limits)
        if user_limits:
            user_limit_set(user=api_key.user, **user_limits)
        return secret

    def client(self, secret: str, *, url_form: str = "bearer", **options: object):
        from openai import OpenAI

        options.setdefault("max_retries", 0)
        if url_form == "path":
            return OpenAI(api_key="ignored", base_url=f"{self.proxy.url}/{secret}/v1", **options)
        return OpenAI(api_key=secret, base_url=self.proxy.v1, **options)


@pytest.fixture
def e2e(transactional_db, proxy: ProxyServer, fake_openai: FakeOpenAI) -> Iterator[E2E]:
    """A proxy process on the test database, prices loaded, a fresh fake upstream."""
    from usage.models import ModelAlias, ModelPrice, ToolPrice
    from usage.prices import aliases_load, prices_load, tool_prices_load

    # Flushed by the previous transactional test.
    if not ModelPrice.objects.exists():
        prices_load()
    if not ModelAlias.objects.exists():
        aliases_load()
    if not ToolPrice.objects.exists():
        tool_prices_load()
    fake_openai.reset()
    yield E2E(proxy=proxy, upstream=fake_openai)
    _wait_until_records_settle()


def _wait_until_records_settle() -> None:
    """Let the servers finish writing the test's last records before the database is flushed
    (a TRUNCATE racing those writes deadlocks on PostgreSQL)."""
    from usage.models import UsageRecord

    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        count = UsageRecord.objects.count()
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > 0.25:
            return
        time.sleep(0.05)


@pytest.fixture
def two_processes(e2e, server_logs) -> Iterator[tuple[ProxyServer, ProxyServer]]:
    """Two proxy processes on one PostgreSQL database and one Redis."""
    from django.db import connection

    if connection.vendor != "postgresql" or not REDIS_URL:
        pytest.skip("needs PostgreSQL (DATABASE_URL) and Redis (TEST_REDIS_URL); .ci/run sets both")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"CACHE_URL": REDIS_URL}
    with (
        running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as a,
        running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as b,
    ):
        yield a, b
