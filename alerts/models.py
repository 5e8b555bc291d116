"""Alerts to users and operators (a budget threshold reached, a key about to expire) and each
try at delivering them.

An `Alert` row is an outbox entry: a budget alert is inserted in the transaction that moves
the ledger's spend past its threshold, so it exists exactly when the spend does, and the
unique constraints below make a second insert (another process, a retried write) a no-op.
Delivery happens later, off the request path (alerts.delivery).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from keys.fields import MoneyField
from keys.models import ApiKey, Period, Team


class AlertKind(models.TextChoices):
    BUDGET = "budget.threshold", "budget threshold reached"
    EXPIRY = "key.expiring", "key expiring"


class AlertScope(models.TextChoices):
    KEY = "key", "key"
    USER = "user", "user"
    TEAM = "team", "team"


class AlertStatus(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent"
    FAILED = "failed", "failed (gave up)"
    NO_CHANNEL = "no_channel", "nothing to send to"


class Alert(models.Model):
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    scope = models.CharField(max_length=4, choices=AlertScope.choices, default=AlertScope.KEY)
    # The user a key's or a user's alert is about (empty for a team's: it goes to the team's
    # admins).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    # The key a key-scope budget alert or an expiry warning is about; empty for a user's.
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE)
    username = models.CharField(max_length=150, blank=True)
    team_name = models.CharField(max_length=100, blank=True)
    key_prefix = models.CharField(max_length=24, blank=True)
    # Budget alerts: the period and the budget in force when the spend reached the threshold.
    period = models.CharField(max_length=8, choices=Period.choices, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    threshold = models.PositiveSmallIntegerField("threshold (%)", null=True, blank=True)
    budget_usd = MoneyField(null=True, blank=True)
    spent_usd = MoneyField(null=True, blank=True)
    # Expiry warnings: the expiry warned about (a key given a new expiry is warned again).
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    status = models.CharField(
        max_length=10, choices=AlertStatus.choices, default=AlertStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    # When a process may claim it next: a claim moves it ahead by a lease, so a process that
    # dies while sending leaves the alert to be tried again after the lease.
    next_attempt_at = models.DateTimeField()
    claimed_by = models.CharField(max_length=40, blank=True)
    last_error = models.TextField(blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        constraints = [
            # One alert per threshold, scope, owner, period and period start, whichever
            # process or retried write gets there first (the insert is ON CONFLICT DO NOTHING).
            models.UniqueConstraint(
                fields=["api_key", "period", "period_start", "threshold"],
                condition=models.Q(kind=AlertKind.BUDGET, scope=AlertScope.KEY),
                name="alert_once_per_key_threshold",
            ),
            models.UniqueConstraint(
                fields=["user", "period", "period_start", "threshold"],
                condition=models.Q(kind=AlertKind.BUDGET, scope=AlertScope.USER),
                name="alert_once_per_user_threshold",
            ),
            models.UniqueConstraint(
                fields=["team", "period", "period_start", "threshold"],
                condition=models.Q(kind=AlertKind.BUDGET, scope=AlertScope.TEAM),
                name="alert_once_per_team_threshold",
            ),
            models.UniqueConstraint(
                fields=["api_key", "expires_at"],
                condition=models.Q(kind=AlertKind.EXPIRY),
                name="alert_once_per_key_expiry",
            ),
        ]

    def __str__(self) -> str:
        owner = {
            AlertScope.KEY: self.key_prefix + "…",
            AlertScope.TEAM: f"team {self.team_name}",
        }.get(self.scope, self.username)
        if self.kind == AlertKind.EXPIRY:
            return f"{owner} expires {self.expires_at:%Y-%m-%d %H:%M}"
        return f"{owner} reached {self.threshold}% of its {self.period} budget"


class DeliveryChannel(models.TextChoices):
    EMAIL = "email", "email"
    WEBHOOK = "webhook", "webhook"


class AlertDelivery(models.Model):
    """One try at sending one alert on one channel, and how it went."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    attempt = models.PositiveSmallIntegerField()
    channel = models.CharField(max_length=8, choices=DeliveryChannel.choices)
    # Email addresses, or the webhook's scheme and host only (a webhook URL can be a secret).
    target = models.CharField(max_length=500)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The exact body sent (the webhook's signed JSON; the email's subject and text).
    body = models.TextField(blank=True)

    class Meta:
        verbose_name = "alert delivery"
        verbose_name_plural = "alert deliveries"
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.channel} try {self.attempt}: {'ok' if self.ok else 'failed'}"
