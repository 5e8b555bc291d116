"""What an alert says: the webhook's signed JSON body and the email's subject and text.

Money is written as the exact Decimal the ledger holds (trailing zeros dropped to cents), as a
string: a receiver never parses it into a float, and 50% of $1 reads "0.50", not "0.5" or
"5E-1". Nothing here carries more of a key than its prefix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from decimal import Decimal

from alerts.models import Alert, AlertKind, AlertScope
from keys.fields import quantized
from keys.money import CENT


def exact_usd(value: Decimal | None) -> str | None:
    if value is None:
        return None
    amount = quantized(value)
    shortest = amount.normalize()
    return format(shortest if shortest.as_tuple().exponent < -2 else amount.quantize(CENT), "f")


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def payload(alert: Alert, *, sent_at: dt.datetime) -> dict[str, object]:
    if alert.kind == AlertKind.EXPIRY:
        return {
            "type": alert.kind,
            "key_prefix": alert.key_prefix,
            "username": alert.username,
            "expires_at": _iso(alert.expires_at),
            "sent_at": _iso(sent_at),
        }
    return {
        "type": alert.kind,
        "threshold": alert.threshold,
        "scope": alert.scope,
        "username": alert.username or None,
        "team": alert.team_name or None,
        "key_prefix": alert.key_prefix or None,
        "period": alert.period,
        "period_start": _iso(alert.period_start),
        "budget_usd": exact_usd(alert.budget_usd),
        "spent_usd": exact_usd(alert.spent_usd),
        "sent_at": _iso(sent_at),
    }


def webhook_body(alert: Alert, *, sent_at: dt.datetime) -> bytes:
    return json.dumps(payload(alert, sent_at=sent_at), separators=(",", ":")).encode()


def signature(body: bytes, secret: str) -> str:
    """The X-Proxy-Signature header: a receiver recomputes it over the raw body it got."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def email_text(alert: Alert) -> tuple[str, str]:
    """(subject, body) of the alert's email."""
    whose = {
        AlertScope.KEY: f"Key {alert.key_prefix}…",
        AlertScope.TEAM: f"Team {alert.team_name}",
    }.get(alert.scope, f"User {alert.username}")
    if alert.kind == AlertKind.EXPIRY:
        subject = f"[OpenAI proxy] Key {alert.key_prefix}… expires on {alert.expires_at:%Y-%m-%d}"
        body = (
            f"The proxy key {alert.key_prefix}… of {alert.username} expires at "
            f"{_iso(alert.expires_at)}. Ask for a new key before then.\n"
        )
        return subject, body
    span = "total" if alert.period == "total" else f"{alert.period}'s"
    subject = f"[OpenAI proxy] {whose} has used {alert.threshold}% of its {span} budget"
    body = (
        f"{whose}{f' (user {alert.username})' if alert.username else ''} has spent "
        f"${exact_usd(alert.spent_usd)} of its "
        f"${exact_usd(alert.budget_usd)} {alert.period} budget "
        f"(period starting {_iso(alert.period_start)}): {alert.threshold}% reached.\n"
        "Requests are refused once the budget is spent. See /v1/proxy/me for what is left.\n"
    )
    return subject, body
