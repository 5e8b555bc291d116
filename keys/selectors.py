"""Reads of keys and limits, shaped for the relay's hot path."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from decimal import Decimal
from typing import Protocol

from django.conf import settings

from keys.models import (
    ApiKey,
    Limits,
    Period,
    QuotaLedger,
    TeamMember,
    UserLimit,
    key_hash,
    model_matches,
    period_start,
)
from keys.money import (
    usd_json,
)


class LedgerCounters(Protocol):
    """What a ledger row and a reservation's copy of it both carry."""

    spent_usd: Decimal
    reserved_usd: Decimal
    tokens: int
    reserved_tokens: int
    requests: int


@dataclasses.dataclass(frozen=True, slots=True)
class Remaining:
    usd: Decimal | None
    tokens: int | None
    requests: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class LimitSnapshot:
    budget_usd: Decimal | None = None
    period: str = Period.TOTAL
    token_limit: int | None = None
    request_limit: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    models: tuple[str, ...] = ()
    budget_mode: str = ""

    @classmethod
    def of(cls, limits: Limits | None) -> LimitSnapshot:
        if limits is None:
            return cls()
        return cls(
            budget_usd=limits.budget_usd,
            period=limits.period,
            token_limit=limits.token_limit,
            request_limit=limits.request_limit,
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_concurrent=limits.max_concurrent,
            models=tuple(limits.model_patterns()),
            budget_mode=limits.budget_mode,
        )

    def model_allowed(self, model: str) -> bool:
        return model_matches(self.models, model)

    def remaining(self, state: LedgerCounters | None) -> Remaining:
        """What these limits leave this period beside `state` (a ledger row or a reservation's
        view of it; None for a period with no row yet), never below zero; None where no limit."""
        spent = state.spent_usd + state.reserved_usd if state else Decimal(0)
        tokens = state.tokens + state.reserved_tokens if state else 0
        requests = state.requests if state else 0
        return Remaining(
            usd=None if self.budget_usd is None else max(self.budget_usd - spent, Decimal(0)),
            tokens=None if self.token_limit is None else max(self.token_limit - tokens, 0),
            requests=None if self.request_limit is None else max(self.request_limit - requests, 0),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "budget_usd": usd_json(self.budget_usd),
            "period": self.period,
            "budget_mode": self.budget_mode,
            "token_limit": self.token_limit,
            "request_limit": self.request_limit,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "models": list(self.models),
        }


# How a refusal names each scope whose limit it hit, and the ledger column of its owner.
SCOPE_LABELS = {"key": "this key", "user": "your account", "team": "your team"}
OWNER_COLUMNS = {"key": "api_key_id", "user": "user_id", "team": "team_id"}


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the relay needs to know about a key, cached per process for a few seconds."""

    id: int
    user_id: int
    username: str
    prefix: str
    name: str
    expires_at: dt.datetime | None
    log_bodies: bool | None
    key_limits: LimitSnapshot
    user_limits: LimitSnapshot
    # The user's team, if any: its limits apply on top of the user's and the key's.
    team_id: int | None = None
    team_name: str = ""
    team_limits: LimitSnapshot = LimitSnapshot()

    def model_allowed(self, model: str) -> bool:
        return all(limits.model_allowed(model) for limits in self.all_limits())

    def scopes(self) -> list[tuple[str, int, LimitSnapshot]]:
        """(scope, owner id, limits) of each scope whose limits apply: "key", "user" and, for
        a team member, "team"."""
        scopes = [("key", self.id, self.key_limits), ("user", self.user_id, self.user_limits)]
        if self.team_id is not None:
            scopes.append(("team", self.team_id, self.team_limits))
        return scopes

    def all_limits(self) -> tuple[LimitSnapshot, ...]:
        """The limits that apply to a request with this key: the key's, its user's and (for
        a team member) the team's. Every one must admit it."""
        if self.team_id is None:
            return (self.key_limits, self.user_limits)
        return (self.key_limits, self.user_limits, self.team_limits)

    @property
    def has_budget(self) -> bool:
        return any(limits.budget_usd is not None for limits in self.all_limits())

    @property
    def strict_budget(self) -> bool:
        """Whether a request this key's budgets cannot bound is refused (else it is reserved
        at the documented defaults): the key's mode, else its user's, else its team's, else
        the proxy's."""
        mode = (
            self.key_limits.budget_mode
            or self.user_limits.budget_mode
            or self.team_limits.budget_mode
            or settings.PROXY_BUDGET_MODE
        )
        return self.has_budget and mode == "strict"


_cache: dict[str, tuple[float, KeyInfo | None]] = {}


def key_info_for_secret(secret: str) -> KeyInfo | None:
    """The active key a secret names, or None. Revoked keys are filtered here and again by the
    quota step on every request, so a cached entry can never outlive a revocation."""
    digest = key_hash(secret)
    hit = _cache.get(digest)
    now = time.monotonic()
    if hit is not None and now - hit[0] < settings.PROXY_KEY_CACHE_SECONDS:
        return hit[1]
    return _key_info_read(digest, key_hash=digest)


def key_info_reread(key: KeyInfo) -> KeyInfo | None:
    """`key` read again now (its user changed team since it was cached), or None if it is
    no longer active; the cache holds the new reading."""
    digest = ApiKey.objects.filter(pk=key.id).values_list("key_hash", flat=True).first()
    return None if digest is None else _key_info_read(digest, key_hash=digest)


def _key_info_read(digest: str, **lookup: object) -> KeyInfo | None:
    now = time.monotonic()
    key = (
        ApiKey.objects.select_related("user", "user__proxy_limit", "user__team_membership__team")
        .filter(revoked_at__isnull=True, user__is_active=True, **lookup)
        .first()
    )
    info = None
    if key is not None:
        try:
            user_limit: UserLimit | None = key.user.proxy_limit
        except UserLimit.DoesNotExist:
            user_limit = None
        try:
            team = key.user.team_membership.team
        except TeamMember.DoesNotExist:
            team = None
        info = KeyInfo(
            id=key.pk,
            user_id=key.user_id,
            username=key.user.get_username(),
            prefix=key.prefix,
            name=key.name,
            expires_at=key.expires_at,
            log_bodies=key.log_bodies,
            key_limits=LimitSnapshot.of(key),
            user_limits=LimitSnapshot.of(user_limit),
            team_id=team.pk if team is not None else None,
            team_name=team.name if team is not None else "",
            team_limits=LimitSnapshot.of(team),
        )
    if len(_cache) > 100_000:
        _cache.clear()
    _cache[digest] = (now, info)
    return info


def key_info_forget(api_key: ApiKey) -> None:
    _cache.pop(api_key.key_hash, None)


def ledger_for(
    *,
    api_key_id: int | None = None,
    user_id: int | None = None,
    team_id: int | None = None,
    period: str,
    now: dt.datetime,
) -> QuotaLedger | None:
    start = period_start(period, now)
    return QuotaLedger.objects.filter(
        api_key_id=api_key_id, user_id=user_id, team_id=team_id, period=period, period_start=start
    ).first()


def key_info_cached(secret: str) -> tuple[bool, KeyInfo | None]:
    """(found, key) from this process's cache, with no query: the relay's hot path."""
    hit = _cache.get(key_hash(secret))
    if hit is not None and time.monotonic() - hit[0] < settings.PROXY_KEY_CACHE_SECONDS:
        return True, hit[1]
    return False, None


def _ledger_report(
    limits: LimitSnapshot, state: QuotaLedger | None, period: str, start: dt.datetime
) -> dict[str, object]:
    from keys.models import period_end

    end = period_end(period, start)
    left = limits.remaining(state)
    return {
        "period": period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat() if end else None,
        "spent_usd": usd_json(state.spent_usd if state else Decimal(0)),
        "reserved_usd": usd_json(state.reserved_usd if state else Decimal(0)),
        "tokens": state.tokens if state else 0,
        "requests": state.requests if state else 0,
        "remaining_usd": usd_json(left.usd),
        "remaining_tokens": left.tokens,
        "remaining_requests": left.requests,
    }


def key_usage_report(*, key: KeyInfo, now: dt.datetime) -> dict[str, object]:
    """What GET /v1/proxy/me shows: the key, its and its user's limits, this period's spend."""
    usage: dict[str, object] = {}
    for scope, owner_id, limits in key.scopes():
        ledger = ledger_for(period=limits.period, now=now, **{OWNER_COLUMNS[scope]: owner_id})
        usage[scope] = _ledger_report(
            limits, ledger, limits.period, period_start(limits.period, now)
        )
    return {
        "object": "proxy.key",
        "key": {
            "id": key.id,
            "prefix": key.prefix,
            "name": key.name,
            "username": key.username,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        },
        "team": {"id": key.team_id, "name": key.team_name} if key.team_id is not None else None,
        "limits": {
            "key": key.key_limits.as_dict(),
            "user": key.user_limits.as_dict(),
            **({"team": key.team_limits.as_dict()} if key.team_id is not None else {}),
        },
        "usage": usage,
    }
