"""The alert sender every relay process runs (started by relay.lifecycle): it claims the
alerts due a try, emails and POSTs them, and records each try. Nothing here runs on a
request's path: a slow mail server or a stalled webhook holds only this loop.

A process that dies after sending but before recording sends that alert again after its
claim's lease (at least once, never lost); two live processes never send the same one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import urllib.parse

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from alerts import messages
from alerts.models import Alert, AlertDelivery, AlertScope, DeliveryChannel
from alerts.services import alert_attempt_record, alerts_claim, expiry_alerts_make

log = logging.getLogger(__name__)

_CLAIM = 20


def _lease() -> dt.timedelta:
    # Longer than one try can take (both channels time out), so a live sender's claim holds.
    return dt.timedelta(seconds=60 + 2 * (settings.ALERT_WEBHOOK_TIMEOUT + settings.EMAIL_TIMEOUT))


def _webhook_target() -> str:
    # Scheme and host only: a webhook URL often carries its own secret (Slack's do).
    url = urllib.parse.urlsplit(settings.ALERT_WEBHOOK_URL)
    return f"{url.scheme}://{url.netloc.rpartition('@')[2]}"


def _recipients(alert: Alert) -> list[str]:
    if alert.scope == AlertScope.TEAM:
        addresses = getattr(alert, "team_admin_emails", [])
    else:
        addresses = [alert.user.email] if alert.user is not None and alert.user.email else []
    return list(dict.fromkeys([*addresses, *settings.ALERT_EMAIL_TO]))


def _delivery(alert: Alert, channel: str, target: str, started: float, at: dt.datetime,
              body: str) -> AlertDelivery:  # fmt: skip
    return AlertDelivery(
        alert_id=alert.pk,
        attempt=alert.attempts + 1,
        channel=channel,
        target=target[:500],
        started_at=at,
        duration_ms=int((time.monotonic() - started) * 1000),
        ok=False,
        body=body,
    )


async def _email(alert: Alert, recipients: list[str]) -> AlertDelivery:
    at, started = timezone.now(), time.monotonic()
    subject, text = messages.email_text(alert)
    error = ""
    try:
        # In a thread of its own, not the database's: SMTP can take seconds.
        await sync_to_async(send_mail, thread_sensitive=False)(
            subject, text, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False
        )
    except Exception as exc:  # noqa: BLE001 (recorded, tried again)
        error = f"{type(exc).__name__}: {exc}"[:1000]
    delivery = _delivery(alert, DeliveryChannel.EMAIL, ", ".join(recipients), started, at,
                         f"Subject: {subject}\n\n{text}")  # fmt: skip
    delivery.ok, delivery.error = not error, error
    return delivery


async def _webhook(alert: Alert, session: aiohttp.ClientSession) -> AlertDelivery:
    at, started = timezone.now(), time.monotonic()
    body = messages.webhook_body(alert, sent_at=at)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "openai-proxy-alerts",
        "X-Proxy-Signature": messages.signature(body, settings.ALERT_WEBHOOK_SECRET),
    }
    delivery = _delivery(alert, DeliveryChannel.WEBHOOK, _webhook_target(), started, at,
                         body.decode())  # fmt: skip
    try:
        async with session.post(settings.ALERT_WEBHOOK_URL, data=body, headers=headers) as resp:
            await resp.read()
            delivery.status_code = resp.status
            delivery.ok = 200 <= resp.status < 300
            if not delivery.ok:
                delivery.error = f"HTTP {resp.status}"
    except TimeoutError:
        delivery.error = f"no answer in {settings.ALERT_WEBHOOK_TIMEOUT:g} s"
    except aiohttp.ClientError as exc:
        delivery.error = type(exc).__name__
    delivery.duration_ms = int((time.monotonic() - started) * 1000)
    return delivery


async def _send(alert: Alert, session: aiohttp.ClientSession | None) -> None:
    from relay.database import in_writer_thread

    channels: list[str] = []
    tries = []
    recipients = _recipients(alert)
    if recipients and alert.email_sent_at is None:
        channels.append(DeliveryChannel.EMAIL)
        tries.append(_email(alert, recipients))
    if session is not None and alert.webhook_sent_at is None:
        channels.append(DeliveryChannel.WEBHOOK)
        tries.append(_webhook(alert, session))
    deliveries = list(await asyncio.gather(*tries))
    for delivery in deliveries:
        if not delivery.ok:
            log.warning("alert %s: %s try %d failed (%s)", alert.pk, delivery.channel,
                        delivery.attempt, delivery.error)  # fmt: skip
    await in_writer_thread(
        alert_attempt_record,
        alert_id=alert.pk,
        token=alert.claimed_by,
        deliveries=deliveries,
        channels=channels,
        now=timezone.now(),
    )


async def deliver_once(*, token: str) -> int:
    """Claim the alerts due a try and try each; returns how many were tried."""
    from relay.database import in_writer_thread

    claimed = await in_writer_thread(
        alerts_claim, token=token, now=timezone.now(), lease=_lease(), limit=_CLAIM
    )
    if not claimed:
        return 0
    if not settings.ALERT_WEBHOOK_URL:
        await asyncio.gather(*(_send(alert, None) for alert in claimed))
        return len(claimed)
    timeout = aiohttp.ClientTimeout(total=settings.ALERT_WEBHOOK_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(_send(alert, session) for alert in claimed))
    return len(claimed)


async def deliver_forever(*, token: str) -> None:
    """Every ALERT_DELIVERY_SECONDS (never, at 0): send what is due; every
    ALERT_EXPIRY_CHECK_SECONDS also look for keys about to expire."""
    from relay.database import in_writer_thread

    every = settings.ALERT_DELIVERY_SECONDS
    if every <= 0:
        return
    expiry_checked: float | None = None
    while True:
        await asyncio.sleep(every)
        try:
            now = time.monotonic()
            if (
                expiry_checked is None
                or now - expiry_checked >= settings.ALERT_EXPIRY_CHECK_SECONDS
            ):
                expiry_checked = now
                await in_writer_thread(expiry_alerts_make, now=timezone.now())
            await deliver_once(token=token)
        except Exception as exc:  # noqa: BLE001 (the database is away: next time)
            log.warning("alert delivery failed (%s); trying again", type(exc).__name__)
