"""GET /metrics: the relay's Prometheus metrics (relay.metrics), for every server process.

Open when METRICS_TOKEN is unset (the server listens on 127.0.0.1 unless told otherwise);
when it is set, only `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from relay import metrics as relay_metrics


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    # A plain (sync) view: reading every worker's files is disk work, kept off the event loop.
    if not _authorised(request):
        response = HttpResponse("A valid metrics token is needed.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    return HttpResponse(relay_metrics.exposition(), content_type=relay_metrics.CONTENT_TYPE)
