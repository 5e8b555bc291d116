"""Concurrency slots in Redis: a release sent twice (retried after a timeout that in fact ran)
frees one slot, never another request's; a slot whose release was lost is pruned."""

from __future__ import annotations

import asyncio

import pytest

from keys import ratelimit
from keys.selectors import KeyInfo, LimitSnapshot


@pytest.fixture
def redis_limits(private_redis, settings):
    settings.CACHE_URL = private_redis.url
    ratelimit._redis = None
    ratelimit._redis_down_since = None
    ratelimit._unreleased.clear()
    yield
    ratelimit._redis = None


def _key(max_concurrent: int) -> KeyInfo:
    return KeyInfo(
        id=991,
        user_id=992,
        username="slots",
        prefix="sk-proxy-slots",
        name="",
        expires_at=None,
        log_bodies=None,
        key_limits=LimitSnapshot(max_concurrent=max_concurrent),
        user_limits=LimitSnapshot(),
    )


def test_a_release_sent_twice_frees_one_slot_not_anothers(redis_limits):
    key = _key(2)

    async def run() -> list[object]:
        first = await ratelimit.rate_acquire(key, tokens=10)
        second = await ratelimit.rate_acquire(key, tokens=10)
        full = await ratelimit.rate_acquire(key, tokens=10)
        await ratelimit.rate_release(first, actual_tokens=5)
        await ratelimit.rate_release(first, actual_tokens=5)  # the retry of a lost answer
        third = await ratelimit.rate_acquire(key, tokens=10)
        fourth = await ratelimit.rate_acquire(key, tokens=10)
        await ratelimit._redis_client().aclose()
        return [first, second, full, third, fourth]

    first, second, full, third, fourth = asyncio.run(run())
    assert not first.local and not second.local  # counted in Redis
    assert isinstance(full, ratelimit.RateLimited)
    assert isinstance(third, ratelimit.RateTicket)
    # `second` still runs: with a counter, the double release would have let this one in.
    assert isinstance(fourth, ratelimit.RateLimited)


def test_a_slot_whose_release_was_lost_is_pruned_after_its_ttl(redis_limits, monkeypatch):
    key = _key(1)

    async def run() -> tuple[object, object]:
        await ratelimit.rate_acquire(key, tokens=1)  # never released: its process died
        blocked = await ratelimit.rate_acquire(key, tokens=1)
        now = ratelimit.time.time()
        monkeypatch.setattr(ratelimit.time, "time", lambda: now + ratelimit.CONCURRENCY_TTL + 1)
        later = await ratelimit.rate_acquire(key, tokens=1)
        await ratelimit._redis_client().aclose()
        return blocked, later

    blocked, later = asyncio.run(run())
    assert isinstance(blocked, ratelimit.RateLimited)
    assert isinstance(later, ratelimit.RateTicket)
