"""Writes of alerts: made in the transaction that moves a budget (or by the expiry check),
claimed by one relay process at a time, and each try's outcome recorded."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import Exists, OuterRef

from alerts.models import Alert, AlertDelivery, AlertKind, AlertScope, AlertStatus, DeliveryChannel
from alerts.thresholds import thresholds_crossed
from keys.models import ApiKey, QuotaLedger, Team, TeamMember
from keys.services import LedgerSpend

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class _Owner:
    """A key's or a user's budget, as this process last read it."""

    read_at: float
    budget_usd: Decimal | None
    period: str
    user_id: int | None
    username: str
    key_prefix: str = ""
    team_name: str = ""


# By (scope, owner id); read again after PROXY_KEY_CACHE_SECONDS, as the relay reads limits.
_owners: dict[tuple[str, int], _Owner] = {}
# The (period, budget) each owner's thresholds were last all checked against in this process:
# an owner not in it (a new process, a changed budget) has every reached threshold made sure
# of once, so an alert owed under a lowered budget, or crossed by the reaper, is not missed.
_checked: dict[tuple[str, int], tuple[str, Decimal | None]] = {}


def _scope_of(spend: LedgerSpend) -> tuple[str, int]:
    """The key, user or team a ledger row's alerts are about."""
    if spend.api_key_id is not None:
        return AlertScope.KEY, spend.api_key_id
    if spend.user_id is not None:
        return AlertScope.USER, spend.user_id
    return AlertScope.TEAM, spend.team_id


def _owners_of(wanted: set[tuple[str, int]]) -> dict[tuple[str, int], _Owner]:
    now = time.monotonic()
    fresh = settings.PROXY_KEY_CACHE_SECONDS
    missing = {o for o in wanted if o not in _owners or now - _owners[o].read_at >= fresh}
    key_ids = [owner_id for scope, owner_id in missing if scope == AlertScope.KEY]
    user_ids = [owner_id for scope, owner_id in missing if scope == AlertScope.USER]
    team_ids = [owner_id for scope, owner_id in missing if scope == AlertScope.TEAM]
    if len(_owners) > 100_000:
        _owners.clear()
        _checked.clear()
    if key_ids:
        for pk, budget, period, user_id, username, prefix in ApiKey.objects.filter(
            pk__in=key_ids
        ).values_list("pk", "budget_usd", "period", "user_id", "user__username", "prefix"):
            _owners[(AlertScope.KEY, pk)] = _Owner(now, budget, period, user_id, username, prefix)
    if user_ids:
        for pk, username, budget, period in (
            get_user_model()
            .objects.filter(pk__in=user_ids)
            .values_list("pk", "username", "proxy_limit__budget_usd", "proxy_limit__period")
        ):
            _owners[(AlertScope.USER, pk)] = _Owner(now, budget, period or "", pk, username)
    if team_ids:
        for pk, name, budget, period in Team.objects.filter(pk__in=team_ids).values_list(
            "pk", "name", "budget_usd", "period"
        ):
            _owners[(AlertScope.TEAM, pk)] = _Owner(now, budget, period, None, "", team_name=name)
    return {o: _owners[o] for o in wanted if o in _owners}


def budget_alerts_record(*, spends: list[LedgerSpend], now: dt.datetime) -> int:
    """Make the budget alerts that these ledger moves owe: call in the transaction that made
    the moves (quota_settle), so an alert exists exactly when the spend that reached its
    threshold is committed, whatever crashes. Returns how many it tried to insert.

    Cheap on the hot path: nothing is read when no ledger's spend grew, an owner's budget is
    read once per PROXY_KEY_CACHE_SECONDS, and an insert happens only when a threshold was
    crossed (or, once per process and budget, when one is reached: see `_checked`)."""
    grown = [s for s in spends if s.spent_after > s.spent_before]
    if not settings.ALERT_THRESHOLDS or not grown:
        return 0
    owners = _owners_of({_scope_of(s) for s in grown})
    due: list[tuple[LedgerSpend, str, _Owner, int]] = []
    for spend in grown:
        scope_owner = _scope_of(spend)
        owner = owners.get(scope_owner)
        # A ledger of another period than the one in force (the period was just changed) has
        # no budget in force.
        if owner is None or owner.budget_usd is None or owner.period != spend.period:
            continue
        in_force = (owner.period, owner.budget_usd)
        catch_up = _checked.get(scope_owner) != in_force
        crossed = thresholds_crossed(
            thresholds=settings.ALERT_THRESHOLDS,
            budget=owner.budget_usd,
            before=spend.spent_before,
            after=spend.spent_after,
            catch_up=catch_up,
        )
        if catch_up:
            transaction.on_commit(
                lambda key=scope_owner, value=in_force: _checked.__setitem__(key, value)
            )
        due += [(spend, scope_owner[0], owner, t) for t in crossed]
    if not due:
        return 0
    starts = dict(
        QuotaLedger.objects.filter(pk__in={s.ledger_id for s, *_ in due}).values_list(
            "pk", "period_start"
        )
    )
    rows = [
        Alert(
            kind=AlertKind.BUDGET,
            scope=scope,
            user_id=owner.user_id,
            api_key_id=spend.api_key_id,
            team_id=spend.team_id,
            username=owner.username,
            key_prefix=owner.key_prefix,
            team_name=owner.team_name,
            period=spend.period,
            period_start=starts[spend.ledger_id],
            threshold=threshold,
            budget_usd=owner.budget_usd,
            spent_usd=spend.spent_after,
            created_at=now,
            next_attempt_at=now,
        )
        for spend, scope, owner, threshold in due
    ]
    try:
        # A savepoint: an alert that cannot be written is logged and lost, never the usage
        # records and the spend it rides with.
        with transaction.atomic():
            # ON CONFLICT DO NOTHING (INSERT OR IGNORE on SQLite): the unique constraints make
            # the second insert of an alert, by any process, a no-op. On PostgreSQL a
            # concurrent insert of the same alert waits for the first one's commit.
            Alert.objects.bulk_create(rows, ignore_conflicts=True)
    except (OperationalError, InterfaceError):
        raise  # the database itself: the write fails and is tried again whole
    except DatabaseError:
        log.exception("budget alerts could not be written; the usage records were")
    return len(rows)


def expiry_alerts_make(*, now: dt.datetime) -> int:
    """Warnings for the active keys that expire within ALERT_EXPIRY_DAYS and were not warned
    about that expiry yet. One query when there is nothing to warn about."""
    horizon = now + dt.timedelta(days=settings.ALERT_EXPIRY_DAYS)
    warned = Alert.objects.filter(
        kind=AlertKind.EXPIRY, api_key=OuterRef("pk"), expires_at=OuterRef("expires_at")
    )
    keys = (
        ApiKey.objects.filter(
            revoked_at__isnull=True,
            user__is_active=True,
            expires_at__gt=now,
            expires_at__lte=horizon,
        )
        .exclude(Exists(warned))
        .values_list("pk", "user_id", "user__username", "prefix", "expires_at")
    )
    rows = [
        Alert(
            kind=AlertKind.EXPIRY,
            scope=AlertScope.KEY,
            user_id=user_id,
            api_key_id=pk,
            username=username,
            key_prefix=prefix,
            expires_at=expires_at,
            created_at=now,
            next_attempt_at=now,
        )
        for pk, user_id, username, prefix, expires_at in keys
    ]
    if rows:
        # Two processes checking at once: the constraint keeps one warning per key and expiry.
        Alert.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def alerts_claim(*, token: str, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[Alert]:
    """Alerts due a try, claimed for the process `token`: each is moved `lease` ahead, so no
    other process takes it meanwhile, and one whose sender died is tried again after it."""
    with transaction.atomic():
        due = Alert.objects.filter(status=AlertStatus.PENDING, next_attempt_at__lte=now)
        if connection.features.has_select_for_update_skip_locked:
            # PostgreSQL: rows another process is claiming right now are skipped, not waited for.
            due = due.select_for_update(skip_locked=True)
        candidates = list(
            due.order_by("next_attempt_at", "pk").values_list("pk", "next_attempt_at")[:limit]
        )
        claimed = [
            pk
            for pk, at in candidates
            # Conditional on the time it was read with: of two processes claiming one row
            # (SQLite has no SKIP LOCKED), one wins and the other updates nothing.
            if Alert.objects.filter(pk=pk, status=AlertStatus.PENDING, next_attempt_at=at).update(
                next_attempt_at=now + lease, claimed_by=token
            )
        ]
    alerts = list(Alert.objects.filter(pk__in=claimed).select_related("user").order_by("pk"))
    # A team's alert goes to its team admins' addresses as they are now (read here, in the
    # database thread, not by the sender on the event loop).
    teams = {a.team_id for a in alerts if a.scope == AlertScope.TEAM and a.team_id is not None}
    admins: dict[int, list[str]] = {}
    for team_id, email in (
        TeamMember.objects.filter(team_id__in=teams, is_admin=True, user__is_active=True)
        .exclude(user__email="")
        .order_by("user__email")
        .values_list("team_id", "user__email")
    ):
        admins.setdefault(team_id, []).append(email)
    for alert in alerts:
        alert.team_admin_emails = admins.get(alert.team_id, [])
    return alerts


def _retry_delay(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=settings.ALERT_RETRY_SECONDS * 2 ** (attempts - 1))


@transaction.atomic
def alert_attempt_record(
    *,
    alert_id: int,
    token: str,
    deliveries: list[AlertDelivery],
    channels: list[str],
    now: dt.datetime,
) -> Alert | None:
    """Store one try at an alert (a delivery per channel tried) and move the alert on: sent
    once every channel in `channels` has taken it, else tried again after a delay that doubles
    each time, or failed after ALERT_MAX_ATTEMPTS tries. None if this process's claim had
    lapsed and another took the alert (its tries are stored all the same)."""
    AlertDelivery.objects.bulk_create(deliveries)
    alert = (
        Alert.objects.select_for_update()
        .filter(pk=alert_id, claimed_by=token, status=AlertStatus.PENDING)
        .first()
    )
    if alert is None:
        return None
    for delivery in deliveries:
        if delivery.ok and delivery.channel == DeliveryChannel.EMAIL:
            alert.email_sent_at = delivery.started_at
        elif delivery.ok and delivery.channel == DeliveryChannel.WEBHOOK:
            alert.webhook_sent_at = delivery.started_at
    alert.claimed_by = ""
    if deliveries:
        alert.attempts += 1
    failures = [d for d in deliveries if not d.ok]
    if not channels:
        sent = alert.email_sent_at or alert.webhook_sent_at
        alert.status = AlertStatus.SENT if sent else AlertStatus.NO_CHANNEL
    elif not failures:
        alert.status = AlertStatus.SENT
        alert.sent_at = now
        alert.last_error = ""
    else:
        alert.last_error = "; ".join(f"{d.channel}: {d.error}" for d in failures)[:2000]
        if alert.attempts >= settings.ALERT_MAX_ATTEMPTS:
            alert.status = AlertStatus.FAILED
        else:
            alert.next_attempt_at = now + _retry_delay(alert.attempts)
    alert.save()
    return alert
