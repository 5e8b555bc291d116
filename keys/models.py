"""Users' proxy keys, the limits on keys and users, and the per-period quota ledger."""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from keys.fields import MoneyField

MONEY = {"max_digits": 22, "decimal_places": 12}


class Period(models.TextChoices):
    DAY = "day", "Day (UTC)"
    WEEK = "week", "Week (Monday, UTC)"
    MONTH = "month", "Month (UTC)"
    TOTAL = "total", "Total (never resets)"


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start of the calendar period holding `now`: periods roll over from timestamps, no cron."""
    now = now.astimezone(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Period.DAY:
        return midnight
    if period == Period.WEEK:
        return midnight - dt.timedelta(days=midnight.weekday())
    if period == Period.MONTH:
        return midnight.replace(day=1)
    return EPOCH


def period_end(period: str, start: dt.datetime) -> dt.datetime | None:
    if period == Period.DAY:
        return start + dt.timedelta(days=1)
    if period == Period.WEEK:
        return start + dt.timedelta(days=7)
    if period == Period.MONTH:
        return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return None


def model_matches(patterns: list[str] | tuple[str, ...], model: str) -> bool:
    """An allow-list admits a model if it is empty or a pattern (`gpt-4o*`) matches."""
    return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)


class BudgetMode(models.TextChoices):
    """What a budget does with a request whose cost it cannot bound (no output maximum, no
    `max_tool_calls` beside a built-in tool)."""

    INHERIT = "", "as the user / the proxy's default"
    STRICT = "strict", "strict: refuse it (400 saying what to send)"
    ESTIMATE = "estimate", "estimate: reserve the documented defaults"


class Limits(models.Model):
    """Limits shared by keys and users; an empty field means no limit of that kind."""

    budget_usd = models.DecimalField(
        "budget (USD)",
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Spend allowed per period.",
        **MONEY,
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.TOTAL)
    budget_mode = models.CharField(
        max_length=8,
        choices=BudgetMode.choices,
        blank=True,
        default=BudgetMode.INHERIT,
        db_default=BudgetMode.INHERIT,
        help_text="A key's choice wins over its user's; empty means PROXY_BUDGET_MODE.",
    )
    token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens (input + output) allowed per period."
    )
    request_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests allowed per period."
    )
    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    max_concurrent = models.PositiveIntegerField("max concurrent requests", null=True, blank=True)
    allowed_models = models.TextField(
        blank=True,
        help_text="Comma-separated model names this may use (`gpt-4o*` patterns allowed); "
        "empty allows every model.",
    )

    class Meta:
        abstract = True

    def model_patterns(self) -> list[str]:
        return [m.strip() for m in self.allowed_models.replace("\n", ",").split(",") if m.strip()]

    def model_allowed(self, model: str) -> bool:
        return model_matches(self.model_patterns(), model)

    def limit_fields(self) -> dict[str, object]:
        return {
            "budget_usd": self.budget_usd,
            "period": self.period,
            "budget_mode": self.budget_mode,
            "token_limit": self.token_limit,
            "request_limit": self.request_limit,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "models": self.model_patterns(),
        }


class UserLimit(Limits):
    """Limits on a user, applied on top of each of the user's keys' own limits."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="proxy_limit"
    )
    max_keys = models.PositiveSmallIntegerField(
        "keys the user may make",
        null=True,
        blank=True,
        help_text="How many active keys the user may hold when making their own on their keys "
        "page (the keys an operator made count too). Empty: the user cannot make keys.",
    )

    class Meta:
        verbose_name = "user limit"

    def __str__(self) -> str:
        return f"limits of {self.user}"


class Team(Limits):
    """A group of users with limits of its own, applied on top of each member's and each of
    their keys' limits: the organisation (this proxy) gives budgets to teams, a team to its
    members, a member to their keys. The tightest limit of the three wins."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMember(models.Model):
    """A user's place in a team: a user belongs to at most one team, so every request is
    billed to exactly one team ledger (or none)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_membership"
    )
    is_admin = models.BooleanField(
        "team admin",
        default=False,
        help_text="Sees the whole team's usage and its members' dashboards.",
    )
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "team member"

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


def key_hash(secret: str) -> str:
    # Keys carry 256 bits of randomness, so one fast unsalted hash is safe (as for GitHub
    # tokens) and lets the relay find a key with one indexed lookup.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Limits):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(
        max_length=24, editable=False, help_text="Shown to recognise the key."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    log_bodies = models.BooleanField(
        null=True,
        blank=True,
        help_text="Store request and response bodies for this key; unset follows USAGE_LOG_BODIES.",
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or self.user})"

    def is_active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def status(self) -> str:
        from django.utils import timezone

        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class QuotaLedger(models.Model):
    """What one key, one user or one team has spent and holds reserved in one period.

    A new period gets a new row, so periods reset from timestamps with no cron job; a budget
    moves only through the conditional UPDATEs in `keys.services`.
    """

    # PROTECT: a ledger row is billing history, so it pins its key or user: neither can be
    # deleted while it exists (revoke the key, deactivate the user). Nothing is detached
    # either: a row with neither owner would break `ledger_key_xor_user` and bill nobody.
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT)
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateTimeField()
    spent_usd = MoneyField(default=Decimal(0))
    reserved_usd = MoneyField(default=Decimal(0))
    tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "period", "period_start"],
                condition=models.Q(api_key__isnull=False),
                name="ledger_one_row_per_key_period",
            ),
            models.UniqueConstraint(
                fields=["user", "period", "period_start"],
                condition=models.Q(user__isnull=False),
                name="ledger_one_row_per_user_period",
            ),
            models.UniqueConstraint(
                fields=["team", "period", "period_start"],
                condition=models.Q(team__isnull=False),
                name="ledger_one_row_per_team_period",
            ),
            # Exactly one owner: a key, a user or a team.
            models.CheckConstraint(
                condition=(
                    models.Q(api_key__isnull=False, user__isnull=True, team__isnull=True)
                    | models.Q(api_key__isnull=True, user__isnull=False, team__isnull=True)
                    | models.Q(api_key__isnull=True, user__isnull=True, team__isnull=False)
                ),
                name="ledger_one_owner",
            ),
        ]

    def __str__(self) -> str:
        owner = self.api_key or self.user or f"team {self.team}"
        return f"{owner} {self.period} from {self.period_start:%Y-%m-%d}"


class RelayProcess(models.Model):
    """A running relay process, so the reaper can tell a crashed process's reservations from
    a live one's: each process writes `seen_at` every few seconds while it runs."""

    token = models.CharField(max_length=40, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "relay process"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"
