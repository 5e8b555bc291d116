"""Writes to keys and to the quota ledger. Everything that moves a budget is here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from keys.models import ApiKey, Period, QuotaLedger, UserLimit, key_hash, period_start
from keys.selectors import KeyInfo, LimitSnapshot, key_info_forget

LIMIT_FIELDS = (
    "budget_usd",
    "period",
    "token_limit",
    "request_limit",
    "rpm",
    "tpm",
    "max_concurrent",
    "allowed_models",
)


class QuotaExceeded(Exception):
    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # True when the request would fit beside what is spent but not beside what other
        # requests hold reserved: worth asking again once they settle.
        self.in_flight = in_flight


class KeyInactive(Exception):
    """The key was revoked (or its user deactivated) after this process cached it."""


def key_issue(
    *,
    username: str,
    name: str = "",
    expires_at: dt.datetime | None = None,
    log_bodies: bool | None = None,
    **limits: object,
) -> tuple[ApiKey, str]:
    """Create a key for `username` (and the user if new). Returns the key and its secret,
    which is not stored anywhere and cannot be shown again."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise TypeError(f"unknown limits: {sorted(unknown)}")
    user, _ = get_user_model().objects.get_or_create(username=username)
    secret = settings.PROXY_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=secret[: len(settings.PROXY_KEY_PREFIX) + 6],
        key_hash=key_hash(secret),
        expires_at=expires_at,
        log_bodies=log_bodies,
        **{k: v for k, v in limits.items() if v is not None},
    )
    return api_key, secret


def key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    key_info_forget(api_key)
    return api_key


def key_update_limits(*, api_key: ApiKey, **changes: object) -> ApiKey:
    for field, value in changes.items():
        if field not in (*LIMIT_FIELDS, "name", "expires_at", "log_bodies"):
            raise TypeError(f"not an editable field: {field}")
        setattr(api_key, field, value)
    api_key.full_clean()
    api_key.save()
    key_info_forget(api_key)
    return api_key


def user_limit_set(*, user, **changes: object) -> UserLimit:  # noqa: ANN001 (any user model)
    limit, _ = UserLimit.objects.get_or_create(user=user)
    for field, value in changes.items():
        if field not in LIMIT_FIELDS:
            raise TypeError(f"not a limit: {field}")
        setattr(limit, field, value)
    limit.save()
    return limit


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerState:
    period: str
    period_start: dt.datetime
    spent_usd: Decimal
    reserved_usd: Decimal
    tokens: int
    reserved_tokens: int
    requests: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    key_ledger_id: int
    user_ledger_id: int
    cost: Decimal
    tokens: int
    key_state: LedgerState
    user_state: LedgerState


# Ledger ids by (scope, owner, period, start): a period's row is looked up once per process.
_ledger_ids: dict[tuple[str, int, str, dt.datetime], int] = {}
_SQLITE_SLACK = Decimal("0.000000000001")


def _money(value: object) -> Decimal:
    # SQLite hands NUMERIC back as float; twelve places is the precision the column keeps.
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value)).quantize(Decimal("0.000000000001"))


def _ledger_id(scope: str, owner_id: int, period: str, start: dt.datetime) -> int:
    cache_key = (scope, owner_id, period, start)
    ledger_id = _ledger_ids.get(cache_key)
    if ledger_id is None:
        owner = {"api_key_id": owner_id} if scope == "key" else {"user_id": owner_id}
        try:
            with transaction.atomic():
                ledger, _ = QuotaLedger.objects.get_or_create(
                    period=period, period_start=start, **owner
                )
        except IntegrityError:  # another process created this period's row first
            ledger = QuotaLedger.objects.get(period=period, period_start=start, **owner)
        ledger_id = ledger.pk
        if len(_ledger_ids) > 100_000:
            _ledger_ids.clear()
        _ledger_ids[cache_key] = ledger_id
    return ledger_id


def _reserve_one(
    *,
    scope: str,
    owner_id: int,
    limits: LimitSnapshot,
    cost: Decimal,
    tokens: int,
    now: dt.datetime,
    key_id: int | None = None,
) -> LedgerState | None:
    """One conditional UPDATE: the reservation is granted only if it fits beside what is
    already spent and reserved. This is what stops N concurrent requests, on any number of
    processes, from all passing a "spent < budget" check that each read before the others
    wrote: the database evaluates the WHERE on the locked row."""
    start = period_start(limits.period, now)
    ledger_id = _ledger_id(scope, owner_id, limits.period, start)
    table = QuotaLedger._meta.db_table
    sql = [
        # Table names come from the models' _meta, never from input; values are parameters.
        f"UPDATE {table} SET reserved_usd = reserved_usd + CAST(%s AS NUMERIC),"  # noqa: S608
        " reserved_tokens = reserved_tokens + %s, requests = requests + 1 WHERE id = %s"
    ]
    params: list[object] = [cost, tokens, ledger_id]
    if limits.budget_usd is not None:
        slack = _SQLITE_SLACK if connection.vendor == "sqlite" else Decimal(0)
        sql.append("AND spent_usd + reserved_usd + CAST(%s AS NUMERIC) <= CAST(%s AS NUMERIC)")
        params += [cost, limits.budget_usd + slack]
    if limits.token_limit is not None:
        sql.append("AND tokens + reserved_tokens + %s <= %s")
        params += [tokens, limits.token_limit]
    if limits.request_limit is not None:
        sql.append("AND requests + 1 <= %s")
        params += [limits.request_limit]
    if key_id is not None:
        # Revocation is checked here, on every request, so a key cached by any process stops
        # working the moment it is revoked.
        key_table = ApiKey._meta.db_table
        user_table = get_user_model()._meta.db_table
        sql.append(
            f"AND EXISTS (SELECT 1 FROM {key_table} k JOIN {user_table} u ON u.id = k.user_id"  # noqa: S608
            " WHERE k.id = %s AND k.revoked_at IS NULL AND u.is_active)"
        )
        params.append(key_id)
    sql.append("RETURNING spent_usd, reserved_usd, tokens, reserved_tokens, requests")
    with connection.cursor() as cursor:
        cursor.execute(" ".join(sql), params)
        row = cursor.fetchone()
    if row is None:
        if not QuotaLedger.objects.filter(pk=ledger_id).exists():
            # The cached row id is gone (ledger pruned or database reset): look it up again.
            _ledger_ids.pop((scope, owner_id, limits.period, start), None)
            return _reserve_one(
                scope=scope,
                owner_id=owner_id,
                limits=limits,
                cost=cost,
                tokens=tokens,
                now=now,
                key_id=key_id,
            )
        return None
    return LedgerState(
        period=limits.period,
        period_start=start,
        spent_usd=_money(row[0]),
        reserved_usd=_money(row[1]),
        tokens=row[2],
        reserved_tokens=row[3],
        requests=row[4],
    )


def _refusal(
    scope: str, limits: LimitSnapshot, owner_id: int, now: dt.datetime, cost: Decimal, tokens: int
) -> QuotaExceeded:
    start = period_start(limits.period, now)
    owner = {"api_key_id": owner_id} if scope == "key" else {"user_id": owner_id}
    ledger = QuotaLedger.objects.filter(period=limits.period, period_start=start, **owner).first()
    whose = "this key" if scope == "key" else "your account"
    span = "" if limits.period == Period.TOTAL else f" this {limits.period}"
    if (
        ledger is not None
        and limits.request_limit is not None
        and ledger.requests + 1 > limits.request_limit
    ):
        return QuotaExceeded(
            f"The request limit of {whose}{span} ({limits.request_limit}) is used up."
        )
    if (
        ledger is not None
        and limits.token_limit is not None
        and ledger.tokens + ledger.reserved_tokens + tokens > limits.token_limit
    ):
        return QuotaExceeded(
            f"The token limit of {whose}{span} ({limits.token_limit}) does not cover this request.",
            in_flight=ledger.tokens + tokens <= limits.token_limit,
        )
    # Fits beside what is spent: the UPDATE failed on reservations that are settling (or
    # settled between it and this read), so asking again can succeed.
    in_flight = ledger is not None and (
        limits.budget_usd is None or ledger.spent_usd + cost <= limits.budget_usd
    )
    return QuotaExceeded(
        f"The budget of {whose}{span} (${limits.budget_usd}) does not cover this request "
        f"(up to ${cost.quantize(Decimal('0.000001'))}). Check your usage at /v1/proxy/me.",
        in_flight=in_flight,
    )


def quota_reserve(*, key: KeyInfo, cost: Decimal, tokens: int, now: dt.datetime) -> Reservation:
    """Reserve a request's worst-case cost and tokens on the key's and the user's ledgers, or
    refuse the whole request: both reservations happen in one transaction or neither does."""
    # Not inside a caller's transaction: a refused call aborts the statement, which would
    # abort that transaction too.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        reservation = _reserve_in_one_call(key=key, cost=cost, tokens=tokens, now=now)
        if reservation is not None:
            return reservation
    with transaction.atomic():
        key_state = _reserve_one(
            scope="key",
            owner_id=key.id,
            limits=key.key_limits,
            cost=cost,
            tokens=tokens,
            now=now,
            key_id=key.id,
        )
        if key_state is None:
            if not ApiKey.objects.filter(
                pk=key.id, revoked_at__isnull=True, user__is_active=True
            ).exists():
                raise KeyInactive()
            raise _refusal("key", key.key_limits, key.id, now, cost, tokens)
        user_state = _reserve_one(
            scope="user",
            owner_id=key.user_id,
            limits=key.user_limits,
            cost=cost,
            tokens=tokens,
            now=now,
        )
        if user_state is None:
            refusal = _refusal("user", key.user_limits, key.user_id, now, cost, tokens)
            transaction.set_rollback(True)
            raise refusal
    return Reservation(
        key_ledger_id=_ledger_id("key", key.id, key.key_limits.period, key_state.period_start),
        user_ledger_id=_ledger_id(
            "user", key.user_id, key.user_limits.period, user_state.period_start
        ),
        cost=cost,
        tokens=tokens,
        key_state=key_state,
        user_state=user_state,
    )


def _reserve_in_one_call(
    *, key: KeyInfo, cost: Decimal, tokens: int, now: dt.datetime
) -> Reservation | None:
    """PostgreSQL: both conditional UPDATEs in one function call (migration 0003), one round
    trip instead of four. None when it did not reserve (refused, revoked, a row gone): the
    caller's transaction then tries again and says why."""
    key_start = period_start(key.key_limits.period, now)
    user_start = period_start(key.user_limits.period, now)
    key_ledger = _ledger_id("key", key.id, key.key_limits.period, key_start)
    user_ledger = _ledger_id("user", key.user_id, key.user_limits.period, user_start)
    k, u = key.key_limits, key.user_limits
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT * FROM oaiproxy_quota_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [key_ledger, user_ledger, key.id, cost, tokens, k.budget_usd, k.token_limit,
                 k.request_limit, u.budget_usd, u.token_limit, u.request_limit],
            )  # fmt: skip
            row = cursor.fetchone()
    except DatabaseError as exc:
        if "oaiproxy: user quota" in str(exc):
            return None
        raise
    if row is None:
        return None

    def state(limits: LimitSnapshot, start: dt.datetime, values: tuple) -> LedgerState:
        spent, reserved, used_tokens, reserved_tokens, requests = values
        return LedgerState(limits.period, start, spent, reserved, used_tokens, reserved_tokens,
                           requests)  # fmt: skip

    return Reservation(
        key_ledger_id=key_ledger,
        user_ledger_id=user_ledger,
        cost=cost,
        tokens=tokens,
        key_state=state(k, key_start, row[:5]),
        user_state=state(u, user_start, row[5:]),
    )


def quota_settle_many(*, settlements: list[tuple[Reservation, Decimal | None, int]]) -> None:
    """Replace reservations by real costs; call inside the transaction that writes the usage
    records, so ledger spend and the sum of record costs can never drift apart.

    Rows are locked key ledgers first, then user ledgers, each in id order: a reservation
    locks its key row then its user row, so neither it nor another writer can ever hold a row
    this one waits for while waiting for one this one holds (no deadlock).
    """
    # ledger id -> [reserved cost, reserved tokens, real cost, real tokens]
    sums: dict[int, list] = {}
    key_rows: set[int] = set()
    for reservation, cost, tokens in settlements:
        key_rows.add(reservation.key_ledger_id)
        for ledger_id in (reservation.key_ledger_id, reservation.user_ledger_id):
            total = sums.setdefault(ledger_id, [Decimal(0), 0, Decimal(0), 0])
            total[0] += reservation.cost
            total[1] += reservation.tokens
            total[2] += cost or Decimal(0)
            total[3] += tokens
    order = sorted(key_rows) + sorted(set(sums) - key_rows)
    table = QuotaLedger._meta.db_table
    with connection.cursor() as cursor:
        for ledger_id in order:
            reserved, reserved_tokens, cost, tokens = sums[ledger_id]
            cursor.execute(
                f"UPDATE {table} SET reserved_usd = reserved_usd - CAST(%s AS NUMERIC),"  # noqa: S608
                " spent_usd = spent_usd + CAST(%s AS NUMERIC),"
                " reserved_tokens = reserved_tokens - %s, tokens = tokens + %s WHERE id = %s",
                [reserved, cost, reserved_tokens, tokens, ledger_id],
            )
