"""Whether a request may go upstream: rate limits, then the atomic reservation of its budget.

The reservation runs in a database thread. A client is never kept waiting on a stuck
database: once its reservation has waited PROXY_DB_TIMEOUT seconds and the database has
finished none of the relay's work meanwhile, it is answered 503. A reservation waiting behind
other requests' (a burst of thousands at once) waits on while the database keeps answering,
up to _QUEUED_AT_MOST, rather than failing requests a working database would have granted.
The reservation is never lost: if it is granted after the client was answered 503, it is
ended at once (released, and recorded as that 503).
"""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal

from django.conf import settings
from django.http import HttpResponse

from keys.fields import MoneyOverflow
from keys.ratelimit import RateLimited, rate_acquire
from keys.selectors import key_info_reread
from keys.services import (
    KeyInactive,
    QuotaExceeded,
    Reservation,
    TeamChanged,
    quota_reserve,
    quota_reserve_many,
)
from relay import errors, lifecycle, recording
from relay.database import ON_SQLITE, UNAVAILABLE, answering, in_db_thread
from relay.exchange import Exchange
from usage.pricing import Price

# Times a reservation refused only because of other requests' reservations is tried again.
_SETTLE_RETRIES = 3
# Longest a reservation waits behind others' while the database keeps answering (seconds).
_QUEUED_AT_MOST = 30.0
# SQLite: reservations that arrive while others are being made go to the database together.
_MAX_TOGETHER = 64
_waiting: list[tuple[dict, asyncio.Future[Reservation]]] = []
_making: asyncio.Task | None = None


def _reserve(**request: object) -> asyncio.Future[Reservation]:
    """The reservation of one request, made in a database thread. On SQLite, whose one
    database thread makes them one after the other, those that arrive while others are being
    made wait and go together, in one transaction (keys.services.quota_reserve_many): under
    load a commit per batch rather than per request; alone, a request goes at once. On
    PostgreSQL each goes on its own (one statement, in autocommit, on a pool of threads)."""
    if not ON_SQLITE:
        return in_db_thread(quota_reserve, **request)
    global _making
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Reservation] = loop.create_future()
    _waiting.append((request, future))
    if _making is None or _making.done() or _making.get_loop() is not loop:
        _making = loop.create_task(_make_waiting())
    return future


async def _make_waiting() -> None:
    while _waiting:
        batch = _waiting[:_MAX_TOGETHER]
        del _waiting[:_MAX_TOGETHER]
        try:
            results = await in_db_thread(quota_reserve_many, [request for request, _ in batch])
        except Exception as exc:  # noqa: BLE001 (the database failed: each request says so)
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def refuse(ex: Exchange, response: HttpResponse, error_code: str) -> HttpResponse:
    """Answer with the proxy's own error, and record the request as refused (with the error
    body, when the key keeps bodies: the request's page then quotes the message, such as
    which budget refused and its amount, not only the code's general meaning)."""
    ex.finish(response.status_code, error_code=error_code, response_body=response.content.decode())
    return response


def _granted_late(ex: Exchange, future: asyncio.Future[Reservation]) -> None:
    # The client was answered 503 while this reservation was still on its way: end it now.
    if not future.cancelled() and future.exception() is None:
        ex.reservation = future.result()
    ex.finish(503, error_code="database_timeout")


async def _waited(future: asyncio.Future[Reservation]) -> Reservation:
    """The reservation, or TimeoutError once the database stopped answering (see above)."""
    timeout = settings.PROXY_DB_TIMEOUT
    waited = 0.0
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout)
        except TimeoutError:
            waited += timeout
            if waited >= _QUEUED_AT_MOST or not answering(within=timeout):
                raise
            timeout = min(timeout, _QUEUED_AT_MOST - waited)


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
        future = _reserve(key=ex.key, cost=cost, tokens=tokens, now=ex.now, record=record)
        try:
            ex.reservation = await _waited(future)
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
        except TeamChanged:
            # The user left or changed team since this process cached the key: bill the team
            # they are in now (or none), read afresh.
            key = await in_db_thread(key_info_reread, ex.key)
            if key is None:
                return refuse(
                    ex,
                    errors.invalid_api_key(
                        "Incorrect API key provided: this proxy key was revoked."
                    ),
                    "invalid_api_key",
                )
            ex.key = key
            if ex.model and not key.model_allowed(ex.model):
                # The view checked the model against the team the key was cached with; the
                # team the user is in now has an allow-list of its own.
                return refuse(
                    ex,
                    errors.openai_error(
                        403,
                        f"This key may not use the model '{ex.model}'.",
                        param="model",
                        code="model_not_allowed",
                    ),
                    "model_not_allowed",
                )
            if attempt == _SETTLE_RETRIES:  # the team changed again and again meanwhile
                message = "Your team changed while this request was being granted; try again."
                return refuse(
                    ex,
                    errors.openai_error(
                        503,
                        message,
                        type="server_error",
                        code="team_changed",
                        headers={"retry-after": "1"},
                    ),
                    "team_changed",
                )
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
