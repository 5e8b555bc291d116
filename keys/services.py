"""Writes to keys and to the quota ledger. Everything that moves a budget is here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    models,
    transaction,
)
from django.utils import timezone

from keys.fields import MoneyOverflow, from_units, money_param
from keys.models import (
    ApiKey,
    Period,
    QuotaLedger,
    RelayProcess,
    Team,
    TeamMember,
    UserLimit,
    key_hash,
    period_start,
)
from keys.money import usd
from keys.selectors import (
    OWNER_COLUMNS,
    SCOPE_LABELS,
    KeyInfo,
    LimitSnapshot,
    key_info_forget,
)
from keys.sql import Columns, db_values

LIMIT_FIELDS = (
    "budget_usd",
    "period",
    "budget_mode",
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


class TeamChanged(Exception):
    """The key's user left (or changed) team after this process cached the key: its next
    request, read afresh, is billed to the team it is in now."""


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


def _forget_keys_of(user_ids: list[int]) -> None:
    for api_key in ApiKey.objects.filter(user_id__in=user_ids).only("key_hash"):
        key_info_forget(api_key)


def team_create(*, name: str, **limits: object) -> Team:
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise TypeError(f"unknown limits: {sorted(unknown)}")
    team = Team(name=name, **{k: v for k, v in limits.items() if v is not None})
    team.full_clean()
    team.save()
    return team


def team_update_limits(*, team: Team, **changes: object) -> Team:
    """Change a team's name or limits. This process reads them at once; others within
    PROXY_KEY_CACHE_SECONDS, as for a key's or a user's limits."""
    for field, value in changes.items():
        if field not in (*LIMIT_FIELDS, "name"):
            raise TypeError(f"not an editable field: {field}")
        setattr(team, field, value)
    team.full_clean()
    team.save()
    _forget_keys_of(list(team.members.values_list("user_id", flat=True)))
    return team


def team_member_set(*, team: Team, user, is_admin: bool = False) -> TeamMember:  # noqa: ANN001
    """Put `user` in `team` (moving them out of any other: a user is in one team at most).
    Their next request is billed to it on this process at once, on others within
    PROXY_KEY_CACHE_SECONDS; a move *out* of a team is checked by every reservation."""
    member, _ = TeamMember.objects.update_or_create(
        user=user, defaults={"team": team, "is_admin": is_admin}
    )
    _forget_keys_of([user.pk])
    return member


def team_member_remove(*, user) -> bool:  # noqa: ANN001 (any user model)
    """Take `user` out of their team. Every process stops billing the team for them at once:
    the reservation checks membership in the statement that reserves."""
    deleted, _ = TeamMember.objects.filter(user=user).delete()
    _forget_keys_of([user.pk])
    return bool(deleted)


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
    team_ledger_id: int | None = None
    team_state: LedgerState | None = None

    def states(self, key: KeyInfo) -> list[tuple[LimitSnapshot, LedgerState]]:
        """Each scope's limits beside its ledger row as this reservation left it."""
        pairs = [(key.key_limits, self.key_state), (key.user_limits, self.user_state)]
        if self.team_state is not None:
            pairs.append((key.team_limits, self.team_state))
        return pairs


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerMove:
    """What settling (or healing) one record does to its key's, its user's and (for a team
    member's request) its team's ledger rows."""

    key_ledger_id: int
    user_ledger_id: int
    release_usd: Decimal
    release_tokens: int
    spend_usd: Decimal
    spend_tokens: int
    team_ledger_id: int | None = None


# Ledger ids by (scope, owner, period, start): a period's row is looked up once per process.
# Only ids of committed rows are kept (see _ledger_id).
_ledger_ids: dict[tuple[str, int, str, dt.datetime], int] = {}


def _money(value: object) -> Decimal:
    # MoneyField columns read raw: integer picodollars on SQLite, NUMERIC on PostgreSQL.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, int):
        raise MoneyOverflow("a ledger amount is past what SQLite holds exactly")
    return from_units(value)


def _owner(scope: str, owner_id: int) -> dict[str, int]:
    return {OWNER_COLUMNS[scope]: owner_id}


def _ledger_id(scope: str, owner_id: int, period: str, start: dt.datetime) -> int:
    cache_key = (scope, owner_id, period, start)
    ledger_id = _ledger_ids.get(cache_key)
    if ledger_id is not None:
        return ledger_id
    owner = _owner(scope, owner_id)
    rows = QuotaLedger.objects.filter(period=period, period_start=start, **owner)
    try:
        with transaction.atomic():
            ledger = rows.first()
            if ledger is None:
                # A team can be deleted while it has no ledger row, and a process can still
                # hold a member's key: the row cannot be made (its foreign key fails, on
                # SQLite only at the commit of a whole quota_reserve_many batch, failing every
                # request in it). The request is then read afresh, as for a member moved out.
                if scope == "team" and not Team.objects.filter(pk=owner_id).exists():
                    raise TeamChanged()
                ledger = QuotaLedger.objects.create(period=period, period_start=start, **owner)
    except IntegrityError:  # another process created this period's row first
        ledger = rows.first()
        if ledger is None:  # no: its owner is gone (deleted meanwhile)
            raise TeamChanged() if scope == "team" else KeyInactive() from None
    ledger_id = ledger.pk

    def remember() -> None:
        if len(_ledger_ids) > 100_000:
            _ledger_ids.clear()
        _ledger_ids[cache_key] = ledger_id

    # Cached only once the row is committed: a row made inside a transaction that then rolls
    # back is gone, SQLite hands its id to the next row anyone creates, and a cached id would
    # then point this owner's reservations at another tenant's ledger.
    transaction.on_commit(remember)
    return ledger_id


def _forget_ledger(scope: str, owner_id: int, period: str, start: dt.datetime) -> None:
    _ledger_ids.pop((scope, owner_id, period, start), None)


def _ledger_update_sql(
    scope: str, limits: LimitSnapshot, key_id: int | None, member_id: int | None = None
) -> str:
    table = QuotaLedger._meta.db_table
    owner_column = OWNER_COLUMNS[scope]
    sql = [
        # Table names come from the models' _meta, never from input; values are parameters.
        f"UPDATE {table} SET reserved_usd = reserved_usd + %(cost)s,"  # noqa: S608
        " reserved_tokens = reserved_tokens + %(tokens)s, requests = requests + 1"
        # The owner and period are checked with the id: a wrong id can miss, never bill
        # another tenant.
        f" WHERE id = %(ledger)s AND {owner_column} = %(owner)s AND period = %(period)s"
        " AND period_start = %(start)s"
    ]
    if limits.budget_usd is not None:
        sql.append("AND spent_usd + reserved_usd + %(cost)s <= %(budget)s")
    if limits.token_limit is not None:
        sql.append("AND tokens + reserved_tokens + %(tokens)s <= %(token_limit)s")
    if limits.request_limit is not None:
        sql.append("AND requests + 1 <= %(request_limit)s")
    if key_id is not None:
        # Revocation is checked here, on every request, so a key cached by any process stops
        # working the moment it is revoked.
        key_table = ApiKey._meta.db_table
        user_table = get_user_model()._meta.db_table
        sql.append(
            f"AND EXISTS (SELECT 1 FROM {key_table} k JOIN {user_table} u ON u.id = k.user_id"  # noqa: S608
            " WHERE k.id = %(owner)s AND k.revoked_at IS NULL AND u.is_active)"
        )
    if member_id is not None:
        # Membership is checked the same way: a user moved out of a team stops spending the
        # team's budget on every process at once, whatever they cached.
        member_table = TeamMember._meta.db_table
        sql.append(
            f"AND EXISTS (SELECT 1 FROM {member_table} m"  # noqa: S608
            " WHERE m.team_id = %(owner)s AND m.user_id = %(member)s)"
        )
    sql.append("RETURNING spent_usd, reserved_usd, tokens, reserved_tokens, requests")
    return " ".join(sql)


def _reserve_one(
    *,
    scope: str,
    owner_id: int,
    limits: LimitSnapshot,
    cost: Decimal,
    tokens: int,
    now: dt.datetime,
    check_key: bool = False,
    member_id: int | None = None,
) -> tuple[int, LedgerState] | None:
    """One conditional UPDATE: the reservation is granted only if it fits beside what is
    already spent and reserved. This is what stops N concurrent requests, on any number of
    processes, from all passing a "spent < budget" check that each read before the others
    wrote: the database evaluates the WHERE on the locked row."""
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    start = period_start(limits.period, now)
    for _ in range(2):
        ledger_id = _ledger_id(scope, owner_id, limits.period, start)
        params = {
            "cost": money_param(cost, connection),
            "tokens": tokens,
            "ledger": ledger_id,
            "owner": owner_id,
            "period": limits.period,
            "start": connection.ops.adapt_datetimefield_value(start),
            "budget": None
            if limits.budget_usd is None
            else money_param(limits.budget_usd, connection),
            "token_limit": limits.token_limit,
            "request_limit": limits.request_limit,
            "member": member_id,
        }
        with connection.cursor() as cursor:
            cursor.execute(
                _ledger_update_sql(scope, limits, owner_id if check_key else None, member_id),
                params,
            )
            row = cursor.fetchone()
        if row is not None:
            return ledger_id, LedgerState(
                limits.period, start, _money(row[0]), _money(row[1]), row[2], row[3], row[4]
            )
        owner = _owner(scope, owner_id)
        if QuotaLedger.objects.filter(
            pk=ledger_id, period=limits.period, period_start=start, **owner
        ).exists():
            return None  # refused
        # The cached id is not this owner's row (pruned, database reset): look it up again.
        _forget_ledger(scope, owner_id, limits.period, start)
    return None


def _refusal(
    scope: str, limits: LimitSnapshot, owner_id: int, now: dt.datetime, cost: Decimal, tokens: int
) -> QuotaExceeded:
    start = period_start(limits.period, now)
    ledger = QuotaLedger.objects.filter(
        period=limits.period, period_start=start, **_owner(scope, owner_id)
    ).first()
    whose = SCOPE_LABELS[scope]
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
        f"The budget of {whose}{span} (${usd(limits.budget_usd)}) does not cover this request "
        f"(up to ${usd(cost)}). Check your usage at /v1/proxy/me.",
        in_flight=in_flight,
    )


def quota_reserve(
    *, key: KeyInfo, cost: Decimal, tokens: int, now: dt.datetime, record: models.Model
) -> Reservation:
    """Reserve a request's worst-case cost and tokens on the key's and the user's ledgers and
    write its pending usage `record`, or refuse the whole request: the two reservations and
    the record are committed together or not at all, so a reservation never exists without
    the row that ends it (the relay settles it; the reaper does if this process dies)."""
    try:
        return _reserve(key=key, cost=cost, tokens=tokens, now=now, record=record)
    except BaseException:
        record.pk = None  # an id from a transaction that did not commit is no id
        record._state.adding = True
        raise


def quota_reserve_many(requests: list[dict]) -> list[Reservation | Exception]:
    """SQLite: reservations that arrived together, made in one transaction — one commit and
    one write of the ledger rows' pages for them all, where each alone costs its own. Each is
    `quota_reserve(**request)` in a savepoint of its own: a refused one rolls back alone, and
    each conditional UPDATE sees the rows as the ones before it left them, so two can never
    pass on the same headroom (the race the conditional UPDATE prevents, unchanged). Returns,
    in order, each one's Reservation or the exception it raised. If the database fails
    (unavailable, locked) or the commit does, it raises and none of them was reserved."""
    results: list[Reservation | Exception] = []
    try:
        with transaction.atomic():
            for request in requests:
                try:
                    results.append(quota_reserve(**request))
                except (OperationalError, InterfaceError):
                    raise  # the database itself: the whole batch fails
                except Exception as exc:  # noqa: BLE001 (this request's answer)
                    results.append(exc)
    except BaseException:
        for request in requests:  # ids from a transaction that did not commit are no ids
            request["record"].pk = None
            request["record"]._state.adding = True
        raise
    return results


def _reserve(
    *, key: KeyInfo, cost: Decimal, tokens: int, now: dt.datetime, record: models.Model
) -> Reservation:
    record.reserved_usd = cost
    record.reserved_tokens = tokens
    # The ledger rows are made (and committed) before the reservation's transaction; see
    # _ledger_id.
    key_start = period_start(key.key_limits.period, now)
    user_start = period_start(key.user_limits.period, now)
    record.key_ledger_id = _ledger_id("key", key.id, key.key_limits.period, key_start)
    record.user_ledger_id = _ledger_id("user", key.user_id, key.user_limits.period, user_start)
    if key.team_id is not None:
        team_start = period_start(key.team_limits.period, now)
        record.team_ledger_id = _ledger_id("team", key.team_id, key.team_limits.period, team_start)
    else:
        record.team_ledger_id = None
    # Not inside a caller's transaction: a refused call aborts the statement, which would
    # abort that transaction too.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        reservation = _reserve_in_one_call(
            key=key, cost=cost, tokens=tokens, now=now, record=record
        )
        if reservation is not None:
            return reservation
    with transaction.atomic():
        granted_key = _reserve_one(
            scope="key",
            owner_id=key.id,
            limits=key.key_limits,
            cost=cost,
            tokens=tokens,
            now=now,
            check_key=True,
        )
        if granted_key is None:
            if not ApiKey.objects.filter(
                pk=key.id, revoked_at__isnull=True, user__is_active=True
            ).exists():
                raise KeyInactive()
            raise _refusal("key", key.key_limits, key.id, now, cost, tokens)
        granted_user = _reserve_one(
            scope="user",
            owner_id=key.user_id,
            limits=key.user_limits,
            cost=cost,
            tokens=tokens,
            now=now,
        )
        if granted_user is None:
            refusal = _refusal("user", key.user_limits, key.user_id, now, cost, tokens)
            transaction.set_rollback(True)
            raise refusal
        granted_team = None
        if key.team_id is not None:
            granted_team = _reserve_one(
                scope="team",
                owner_id=key.team_id,
                limits=key.team_limits,
                cost=cost,
                tokens=tokens,
                now=now,
                member_id=key.user_id,
            )
            if granted_team is None:
                if not TeamMember.objects.filter(team_id=key.team_id, user_id=key.user_id).exists():
                    transaction.set_rollback(True)
                    raise TeamChanged()
                refusal = _refusal("team", key.team_limits, key.team_id, now, cost, tokens)
                transaction.set_rollback(True)
                raise refusal
            record.team_ledger_id, team_state = granted_team
        record.key_ledger_id, key_state = granted_key
        record.user_ledger_id, user_state = granted_user
        _insert(record)
    return Reservation(
        key_ledger_id=record.key_ledger_id,
        user_ledger_id=record.user_ledger_id,
        cost=cost,
        tokens=tokens,
        key_state=key_state,
        user_state=user_state,
        team_ledger_id=record.team_ledger_id,
        team_state=team_state if granted_team is not None else None,
    )


@functools.cache
def _insert_sql(model: type[models.Model]) -> tuple[str, Columns]:
    """A plain INSERT of every column of `model` but its id, made once: `Model.save()` builds
    and compiles its query anew each time, a third of the reservation's own time."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} "  # noqa: S608 (names from _meta)
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(model._meta.pk.column)}"
    )
    return sql, Columns(fields)


def _insert(record: models.Model) -> None:
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    sql, fields = _insert_sql(type(record))
    with connection.cursor() as cursor:
        cursor.execute(sql, db_values(record, fields, connection))
        record.pk = cursor.fetchone()[0]
    record._state.adding = False


@functools.cache
def _reserve_and_insert_sql(model: type[models.Model]) -> tuple[str, Columns]:
    """The one-call reservation's statement for records of `model`, and the fields it fills
    (made once: the columns are the model's)."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    sql = (
        "WITH q AS (SELECT * FROM oaiproxy_quota_reserve_teams("  # noqa: S608 (names from _meta)
        "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)),"
        f" r AS (INSERT INTO {model._meta.db_table} ({columns})"
        f" SELECT {', '.join(['%s'] * len(fields))} FROM q RETURNING id)"
        " SELECT q.*, r.id FROM q CROSS JOIN r"
    )
    return sql, Columns(fields)


def _reserve_in_one_call(
    *, key: KeyInfo, cost: Decimal, tokens: int, now: dt.datetime, record: models.Model
) -> Reservation | None:
    """PostgreSQL: the conditional UPDATEs of the key's, the user's and the team's rows (the
    function of migration keys/0009) and the pending record's INSERT in one statement, one
    round trip. None when it did not reserve (refused, revoked, a row gone, no longer in the
    team): the caller's transaction then tries again and says why."""
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    k, u, t = key.key_limits, key.user_limits, key.team_limits
    team = key.team_id is not None
    sql, fields = _reserve_and_insert_sql(type(record))
    values = db_values(record, fields, connection)
    params = [
        record.key_ledger_id, record.user_ledger_id, key.id, key.user_id,
        period_start(k.period, now), period_start(u.period, now), cost, tokens,
        k.budget_usd, k.token_limit, k.request_limit, u.budget_usd, u.token_limit,
        u.request_limit,
        record.team_ledger_id, key.team_id, period_start(t.period, now) if team else None,
        t.budget_usd if team else None, t.token_limit if team else None,
        t.request_limit if team else None,
        *values,
    ]  # fmt: skip
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    except DatabaseError as exc:
        if "oaiproxy: user quota" in str(exc) or "oaiproxy: team quota" in str(exc):
            return None
        raise
    if row is None:
        return None

    def state(limits: LimitSnapshot, values: tuple) -> LedgerState:
        spent, reserved, used_tokens, reserved_tokens, requests = values
        return LedgerState(limits.period, period_start(limits.period, now), spent, reserved,
                           used_tokens, reserved_tokens, requests)  # fmt: skip

    record.pk = row[15]
    record._state.adding = False
    return Reservation(
        key_ledger_id=record.key_ledger_id,
        user_ledger_id=record.user_ledger_id,
        cost=cost,
        tokens=tokens,
        key_state=state(k, row[:5]),
        user_state=state(u, row[5:10]),
        team_ledger_id=record.team_ledger_id,
        team_state=state(t, row[10:15]) if team else None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerSpend:
    """What one settlement did to one ledger row's spend (read back from its UPDATE)."""

    ledger_id: int
    api_key_id: int | None
    user_id: int | None
    period: str
    spent_before: Decimal
    spent_after: Decimal
    team_id: int | None = None


def quota_settle(*, moves: list[LedgerMove]) -> list[LedgerSpend]:
    """Apply settlements to the ledgers; call inside the transaction that completes the usage
    records, so ledger spend and the sum of record costs can never drift apart. Returns each
    moved row's spend before and after (for budget alerts, alerts.services).

    Rows are locked key ledgers first, then user ledgers, then team ledgers, each in id order:
    a reservation locks its key row, its user row, then its team row, so neither it nor
    another writer can ever hold a row this one waits for while waiting for one this one holds
    (no deadlock).
    """
    connection = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: one lookup
    # ledger id -> [released cost, released tokens, spent cost, spent tokens]
    sums: dict[int, list] = {}
    key_rows: set[int] = set()
    team_rows: set[int] = set()
    for move in moves:
        key_rows.add(move.key_ledger_id)
        rows = [move.key_ledger_id, move.user_ledger_id]
        if move.team_ledger_id is not None:
            team_rows.add(move.team_ledger_id)
            rows.append(move.team_ledger_id)
        for ledger_id in rows:
            total = sums.setdefault(ledger_id, [Decimal(0), 0, Decimal(0), 0])
            total[0] += move.release_usd
            total[1] += move.release_tokens
            total[2] += move.spend_usd
            total[3] += move.spend_tokens
    order = (
        sorted(key_rows) + sorted(set(sums) - key_rows - team_rows) + sorted(team_rows - key_rows)
    )
    table = QuotaLedger._meta.db_table
    spends: list[LedgerSpend] = []
    with connection.cursor() as cursor:
        for ledger_id in order:
            released, released_tokens, spent, spent_tokens = sums[ledger_id]
            if not (released or released_tokens or spent or spent_tokens):
                continue
            cursor.execute(
                f"UPDATE {table} SET reserved_usd = reserved_usd - %s,"  # noqa: S608
                " spent_usd = spent_usd + %s,"
                " reserved_tokens = reserved_tokens - %s, tokens = tokens + %s WHERE id = %s"
                " RETURNING spent_usd, reserved_usd, api_key_id, user_id, period, team_id",
                [
                    money_param(released, connection),
                    money_param(spent, connection),
                    released_tokens,
                    spent_tokens,
                    ledger_id,
                ],
            )
            row = cursor.fetchone()
            if row is not None:
                # SQLite: a sum that overflowed came back a REAL; refuse the whole write.
                after, _ = _money(row[0]), _money(row[1])
                spends.append(
                    LedgerSpend(ledger_id, row[2], row[3], row[4], after - spent, after, row[5])
                )
    return spends


def relay_process_beat(*, token: str, hostname: str, pid: int, started_at: dt.datetime) -> None:
    """Say that a relay process is alive: the reaper leaves its reservations alone."""
    now = timezone.now()
    updated = RelayProcess.objects.filter(token=token).update(seen_at=now)
    if not updated:
        RelayProcess.objects.get_or_create(
            token=token,
            defaults={"hostname": hostname, "pid": pid, "started_at": started_at, "seen_at": now},
        )


def relay_process_leave(*, token: str) -> None:
    """A relay process that stopped cleanly (its records are written) leaves the registry."""
    RelayProcess.objects.filter(token=token).delete()


def relay_processes_live(*, stale_after: dt.timedelta) -> list[str]:
    """Tokens of the relay processes seen within `stale_after`."""
    since = timezone.now() - stale_after
    return list(RelayProcess.objects.filter(seen_at__gte=since).values_list("token", flat=True))


def relay_processes_forget(*, stale_after: dt.timedelta) -> int:
    """Drop the registry rows of processes not seen for ten times `stale_after`."""
    since = timezone.now() - 10 * stale_after
    deleted, _ = RelayProcess.objects.filter(seen_at__lt=since).delete()
    return deleted
