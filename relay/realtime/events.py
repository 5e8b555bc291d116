"""What the proxy itself says on a realtime socket: a refusal (an HTTP error in OpenAI's shape)
as an `error` event or a close reason, and the ids of the events it sends."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from django.http import HttpResponse

# A WebSocket close reason is at most 123 bytes.
_REASON_BYTES = 123
# Ids of the events the proxy sends itself (upstream's errors about them are not relayed),
# and of a client's response.create that came without one (its errors are).
_PROXY_EVENT = "event_proxy_"
_CLIENT_EVENT = "event_client_"


def _reason(text: str) -> str:
    return text.encode()[:_REASON_BYTES].decode("utf-8", "ignore")


def _error_of(response: HttpResponse) -> dict[str, Any]:
    try:
        error = orjson.loads(response.content)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error = None
    if not isinstance(error, dict):
        return {"type": "server_error", "code": "proxy_error", "message": "Refused."}
    return error


def _event_id() -> str:
    return _PROXY_EVENT + secrets.token_hex(10)


def _error_event(error: dict[str, Any], client_event_id: object) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": _event_id(),
        "error": {
            "type": error.get("type") or "invalid_request_error",
            "code": error.get("code"),
            "message": error.get("message") or "",
            "param": error.get("param"),
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        },
    }
