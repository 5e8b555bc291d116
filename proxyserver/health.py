"""Health checks: /healthz (the process answers) and /readyz (its database and cache do, an
upstream key is configured and, with READYZ_CHECK_UPSTREAM, OpenAI accepts it)."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from keys.ratelimit import redis_ping, uses_redis
from relay import upstream
from relay.database import in_db_thread

_CHECK_SECONDS = 3


async def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


async def readyz(request: HttpRequest) -> HttpResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(in_db_thread(_database_ok), timeout=_CHECK_SECONDS)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 (any failure means not ready)
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        if uses_redis():
            await asyncio.wait_for(redis_ping(), timeout=_CHECK_SECONDS)
        checks["cache"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["cache"] = f"error: {type(exc).__name__}"
    key_problem = upstream.upstream_key_problem(settings.OPENAI_API_KEY)
    checks["upstream_key"] = "ok" if key_problem is None else f"error: {key_problem}"
    if settings.READYZ_CHECK_UPSTREAM and key_problem is None:
        checks["upstream"] = await upstream.models_check(timeout=_CHECK_SECONDS)
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
