"""Whether a request may go upstream: rate limits, then the atomic reservation of its budget.

The reservation runs in a database thread and is waited for at most PROXY_DB_TIMEOUT
seconds. A client is never kept waiting on a stuck database, and the reservation is never
lost: if it is granted after the client was answered 503, it is ended at once (released, and
recorded as that 503).
"""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal

from django.conf import settings
from django.http import HttpResponse

from keys.fields import MoneyOverflow
from keys.ratelimit import RateLimited, rate_acquire
from keys.services import KeyInactive, QuotaExceeded, Reservation, quota_reserve
from relay import errors, lifecycle, recording
from relay.database import UNAVAILABLE, in_db_thread
from relay.exchange import Exchange
from usage.pricing import Price

# Times a reservation refused only because of other requests' reservations is tried again.
_SETTLE_RETRIES = 3


def refuse(ex: Exchange, response: HttpResponse, error_code: str) -> HttpResponse:
    """Answer with the proxy's own error, and record the request as refused."""
    ex.finish(response.status_code, error_code=error_code)
    return response


def _granted_late(ex: Exchange, future: asyncio.Future[Reservation]) -> None:
    # The client was answered 503 while this reservation was still on its way: end it now.
    if not future.cancelled() and future.exception() is None:
        ex.reservation = future.result()
    ex.finish(503, error_code="database_timeout")


async def grant(
    ex: Exchange, *, cost: Decimal, tokens: int, rate_tokens: int, price: Price | None = None
) -> HttpResponse | None:
    """Rate limits, then the atomic reservation (with the request's pending record). Returns
    an error response (already recorded), or None if granted."""
    ticket = await rate_acquire(ex.key, tokens=rate_tokens)
    if isinstance(ticket, RateLimited):
        return refuse(
            ex,
            errors.rate_limited(ticket.message, kind=ticket.kind, retry_after=ticket.retry_after),
            "rate_limit_exceeded",
        )
    ex.ticket = ticket
    if not lifecycle.registered():  # once per process; no task on every request after it
        try:
            await asyncio.wait_for(lifecycle.ensure_registered(), timeout=settings.PROXY_DB_TIMEOUT)
        except (TimeoutError, *UNAVAILABLE):
            return refuse(ex, errors.database_unavailable(), "database_unavailable")
    record = ex.pending_record(price)
    for attempt in range(_SETTLE_RETRIES + 1):
        future = in_db_thread(
            quota_reserve, key=ex.key, cost=cost, tokens=tokens, now=ex.now, record=record
        )
        try:
            ex.reservation = await asyncio.wait_for(
                asyncio.shield(future), timeout=settings.PROXY_DB_TIMEOUT
            )
            return None
        except TimeoutError:
            ex.finish_later = True
            future.add_done_callback(functools.partial(_granted_late, ex))
            return errors.database_unavailable()
        except QuotaExceeded as exc:
            if not exc.in_flight or attempt == _SETTLE_RETRIES:
                return refuse(ex, errors.insufficient_quota(exc.message), "insufficient_quota")
            # It fits beside what is spent, not beside what is still reserved: a client
            # sending one request after another may be ahead of the previous record's
            # write. Wait for this process's pending writes, or briefly for another's.
            if not await recording.flushed(timeout=0.5):
                await asyncio.sleep(0.02 * 2**attempt)
        except KeyInactive:
            return refuse(
                ex,
                errors.invalid_api_key("Incorrect API key provided: this proxy key was revoked."),
                "invalid_api_key",
            )
        except UNAVAILABLE:
            return refuse(ex, errors.database_unavailable(), "database_unavailable")
        except MoneyOverflow:
            message = (
                "This key's spend has reached what the proxy's SQLite database can count "
                "exactly ($9.2 million); the operator must move the proxy to PostgreSQL."
            )
            return refuse(ex, errors.insufficient_quota(message), "insufficient_quota")
    return None  # not reached: the last attempt returns
