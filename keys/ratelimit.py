"""RPM, TPM and concurrency limits, shared by every server process when Redis is configured.

Fixed one-minute windows: a window's counter is checked and bumped by one Lua script, so the
check and the increment cannot interleave between processes. Rate limits may admit a request
or two too many at a window's edge (as healthchecks' TokenBucket knowingly does); budgets,
which are money, are enforced by the database ledger in keys.services instead.

When Redis is unreachable, rate limits degrade to each process's own counters (so N processes
admit up to N times a limit), with one warning when it goes and one line when it is back;
Redis is tried again once a second meanwhile, never on every request. Budgets, token and
request caps are in the database and are not affected.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid

from django.conf import settings

from keys.selectors import SCOPE_LABELS, KeyInfo, LimitSnapshot

log = logging.getLogger(__name__)
WINDOW = 60
# Redis calls on the request path give up after this; then the local counters take over.
_REDIS_TIMEOUT = 0.5
_REDIS_RETRY_SECONDS = 1.0
# A request's concurrency slot is a member of a sorted set, scored by when it was taken: a
# slot whose release never came (a process killed, a release lost with Redis) is pruned after
# this, and releasing is ZREM, which a retried release cannot do twice.
CONCURRENCY_TTL = 900

_ACQUIRE = """
local tokens = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local now = tonumber(ARGV[3 + n * 3])
local member = ARGV[4 + n * 3]
local ttl = tonumber(ARGV[5 + n * 3])
for i = 0, n - 1 do
  local rpm, tpm, cc = tonumber(ARGV[3 + i * 3]), tonumber(ARGV[4 + i * 3]), tonumber(ARGV[5 + i * 3])
  if rpm > 0 and tonumber(redis.call('GET', KEYS[1 + i * 3]) or '0') + 1 > rpm then return {1, i} end
  if tpm > 0 and tonumber(redis.call('GET', KEYS[2 + i * 3]) or '0') + tokens > tpm then return {2, i} end
  if cc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + i * 3], '-inf', now - ttl)
    if redis.call('ZCARD', KEYS[3 + i * 3]) + 1 > cc then return {3, i} end
  end
end
for i = 0, n - 1 do
  if tonumber(ARGV[3 + i * 3]) > 0 then
    redis.call('INCR', KEYS[1 + i * 3]); redis.call('EXPIRE', KEYS[1 + i * 3], 120)
  end
  if tonumber(ARGV[4 + i * 3]) > 0 then
    redis.call('INCRBY', KEYS[2 + i * 3], tokens); redis.call('EXPIRE', KEYS[2 + i * 3], 120)
  end
  if tonumber(ARGV[5 + i * 3]) > 0 then
    redis.call('ZADD', KEYS[3 + i * 3], now, member); redis.call('EXPIRE', KEYS[3 + i * 3], ttl)
  end
end
return {0, 0}
"""

_RELEASE = """
if ARGV[1] == '1' then redis.call('ZREM', KEYS[1], ARGV[4]) end
if ARGV[2] == '1' and tonumber(ARGV[3]) ~= 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[3])
end
return 0
"""


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimited:
    kind: str  # "requests" or "tokens", OpenAI's error type
    message: str
    retry_after: int


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    name: str
    limits: LimitSnapshot
    label: str


@dataclasses.dataclass(slots=True)
class RateTicket:
    """What a granted request holds: counters to give back when it ends."""

    concurrency_keys: list[str]
    token_keys: list[str]
    tokens: int
    local: bool = True  # counted in this process (no Redis, or Redis was away)
    member: str = ""  # this request's member of the concurrency sets in Redis


def _scopes(key: KeyInfo) -> list[Scope]:
    # Counter names "k<id>", "u<id>", "t<id>": the first letter of the scope and its owner.
    return [
        Scope(f"{scope[0]}{owner_id}", limits, SCOPE_LABELS[scope])
        for scope, owner_id, limits in key.scopes()
        if limits.rpm or limits.tpm or limits.max_concurrent
    ]


def _names(scope: Scope, minute: int) -> tuple[str, str, str]:
    prefix = "oaiproxy:rl"
    return (
        f"{prefix}:{scope.name}:r:{minute}",
        f"{prefix}:{scope.name}:t:{minute}",
        f"{prefix}:{scope.name}:cz",
    )


def _refusal(code: int, scope: Scope, now: float) -> RateLimited:
    until_next_window = max(1, math.ceil(WINDOW - now % WINDOW))
    if code == 1:
        return RateLimited(
            "requests",
            f"Rate limit reached for {scope.label}: {scope.limits.rpm} requests per minute.",
            until_next_window,
        )
    if code == 2:
        return RateLimited(
            "tokens",
            f"Rate limit reached for {scope.label}: {scope.limits.tpm} tokens per minute.",
            until_next_window,
        )
    return RateLimited(
        "requests",
        f"Too many concurrent requests for {scope.label} (at most {scope.limits.max_concurrent}).",
        1,
    )


class _LocalCounters:
    """One process's counters, for a server run without Redis. The event loop runs one
    coroutine at a time and nothing here awaits, so check-and-bump is atomic."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}

    def get(self, name: str, now: float) -> int:
        value, expires = self._values.get(name, (0, 0.0))
        return value if expires > now else 0

    def add(self, name: str, amount: int, ttl: float, now: float) -> None:
        self._values[name] = (max(self.get(name, now) + amount, 0), now + ttl)
        if len(self._values) > 200_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}


_local = _LocalCounters()
_redis = None


def _redis_client():  # noqa: ANN202 (redis.asyncio.Redis, imported lazily)
    global _redis
    if _redis is None:
        import redis.asyncio

        _redis = redis.asyncio.from_url(
            settings.CACHE_URL,
            socket_timeout=_REDIS_TIMEOUT,
            socket_connect_timeout=_REDIS_TIMEOUT,
        )
        _redis.acquire_script = _redis.register_script(_ACQUIRE)
        _redis.release_script = _redis.register_script(_RELEASE)
    return _redis


def uses_redis() -> bool:
    return settings.CACHE_URL.startswith(("redis://", "rediss://", "unix://"))


async def redis_ping() -> None:
    await _redis_client().ping()


_redis_down_since: float | None = None
_redis_tried_at = 0.0


def _redis_usable(now: float) -> bool:
    global _redis_tried_at
    if _redis_down_since is None:
        return True
    if now - _redis_tried_at >= _REDIS_RETRY_SECONDS:
        _redis_tried_at = now
        return True
    return False


def _redis_failed(exc: Exception, now: float) -> None:
    global _redis_down_since, _redis_tried_at
    _redis_tried_at = now
    if _redis_down_since is None:
        _redis_down_since = now
        log.warning(
            "Redis is unreachable (%s): rate limits are counted per process until it is back; "
            "budgets are unaffected (they are in the database)",
            type(exc).__name__,
        )


# Concurrency slots (set, member) whose release could not reach Redis, or whose acquire timed
# out on our side but may have run on Redis: given back when it answers again.
_unreleased: list[tuple[str, str]] = []


async def _release_unreleased(client) -> None:  # noqa: ANN001
    while _unreleased:
        name, member = _unreleased.pop()
        try:
            await client.release_script(keys=[name, "oaiproxy:rl:none"], args=["1", "0", 0, member])
        except _redis_errors():
            _unreleased.append((name, member))
            return


def _redis_ok() -> None:
    global _redis_down_since
    if _redis_down_since is not None:
        log.warning(
            "Redis is back after %.0f s: rate limits are shared again",
            time.time() - _redis_down_since,
        )
        _redis_down_since = None


def _redis_errors() -> tuple[type[Exception], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError, TimeoutError)


async def rate_acquire(key: KeyInfo, *, tokens: int) -> RateTicket | RateLimited:
    scopes = _scopes(key)
    if not scopes:
        return RateTicket([], [], tokens)
    now = time.time()
    minute = int(now // WINDOW)
    names = [_names(scope, minute) for scope in scopes]
    ticket = RateTicket(
        concurrency_keys=[
            n[2] for s, n in zip(scopes, names, strict=True) if s.limits.max_concurrent
        ],
        token_keys=[n[1] for s, n in zip(scopes, names, strict=True) if s.limits.tpm],
        tokens=tokens,
    )
    if uses_redis() and _redis_usable(now):
        client = _redis_client()
        argv: list[int | float | str] = [tokens, len(scopes)]
        for scope in scopes:
            argv += [scope.limits.rpm or 0, scope.limits.tpm or 0, scope.limits.max_concurrent or 0]
        ticket.member = uuid.uuid4().hex
        argv += [now, ticket.member, CONCURRENCY_TTL]
        try:
            if _unreleased:
                await _release_unreleased(client)
            code, index = await client.acquire_script(keys=[k for n in names for k in n], args=argv)
        except _redis_errors() as exc:
            _redis_failed(exc, now)
            # A timed-out script may still have taken its slots: give them back later.
            _unreleased.extend((name, ticket.member) for name in ticket.concurrency_keys)
        else:
            _redis_ok()
            if code:
                return _refusal(int(code), scopes[int(index)], now)
            ticket.local = False
            return ticket
    for scope, (rpm_key, tpm_key, cc_key) in zip(scopes, names, strict=True):
        limits = scope.limits
        if limits.rpm and _local.get(rpm_key, now) + 1 > limits.rpm:
            return _refusal(1, scope, now)
        if limits.tpm and _local.get(tpm_key, now) + tokens > limits.tpm:
            return _refusal(2, scope, now)
        if limits.max_concurrent and _local.get(cc_key, now) + 1 > limits.max_concurrent:
            return _refusal(3, scope, now)
    for scope, (rpm_key, tpm_key, cc_key) in zip(scopes, names, strict=True):
        if scope.limits.rpm:
            _local.add(rpm_key, 1, 120, now)
        if scope.limits.tpm:
            _local.add(tpm_key, tokens, 120, now)
        if scope.limits.max_concurrent:
            _local.add(cc_key, 1, CONCURRENCY_TTL, now)
    return ticket


async def rate_release(ticket: RateTicket, *, actual_tokens: int) -> None:
    """End a request: free its concurrency slot and correct the minute's token count."""
    if not ticket.concurrency_keys and not ticket.token_keys:
        return
    delta = actual_tokens - ticket.tokens
    if not ticket.local:
        client = _redis_client()
        try:
            for i in range(max(len(ticket.concurrency_keys), len(ticket.token_keys))):
                cc = ticket.concurrency_keys[i] if i < len(ticket.concurrency_keys) else ""
                tk = ticket.token_keys[i] if i < len(ticket.token_keys) else ""
                await client.release_script(
                    keys=[cc or "oaiproxy:rl:none", tk or "oaiproxy:rl:none"],
                    args=["1" if cc else "0", "1" if tk else "0", delta, ticket.member],
                )
        except _redis_errors() as exc:
            # Given back once Redis answers again (else a slot stays taken until
            # CONCURRENCY_TTL); the minute's token count is left as it was.
            _redis_failed(exc, time.time())
            _unreleased.extend((name, ticket.member) for name in ticket.concurrency_keys)
        return
    now = time.time()
    for name in ticket.concurrency_keys:
        _local.add(name, -1, CONCURRENCY_TTL, now)
    for name in ticket.token_keys:
        if _local.get(name, now):
            _local.add(name, delta, 120, now)
