"""One log line per finished request, written where its record is made (Exchange.finish).

The line carries who asked what and how it went: the record's uid as request id, the user's
id, the key's prefix (never the key), model, endpoint, status, tokens, cost, latency and
OpenAI's request id; never a body. It is logged at INFO on `relay.requests` (LOG_LEVEL=WARNING
leaves it out) and formatted by proxyserver.log_format: key=value, or JSON with LOG_FORMAT=json.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from relay.redaction import redact

if TYPE_CHECKING:
    from usage.models import UsageRecord

log = logging.getLogger("relay.requests")


def write(record: UsageRecord, upstream_seconds: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    cost = record.cost_usd
    log.info(
        "request",
        extra={
            "request": {
                "request_id": str(record.uid),
                "user_id": record.user_id,
                "key_prefix": record.key_prefix,
                # What a client sent may hold a key pasted in the wrong place: masked as in
                # every other line (relay.redaction).
                "model": redact(record.response_model or record.model),
                "endpoint": redact(record.endpoint),
                "stream": record.stream,
                "status": record.status_code,
                "error_code": record.error_code,
                "prompt_tokens": record.prompt_tokens,
                "cached_tokens": record.cached_tokens,
                "completion_tokens": record.completion_tokens,
                "reasoning_tokens": record.reasoning_tokens,
                "cost_usd": None if cost is None else format(cost, "f"),
                "latency_ms": record.latency_ms,
                "upstream_ms": int(upstream_seconds * 1000),
                "upstream_request_id": redact(record.upstream_request_id),
            }
        },
    )
