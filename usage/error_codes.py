"""What a record's `error_code` told the client, for the pages that show a failed request.

The record keeps the code, not the message (the message can quote the request). When the
response body was stored, the message is read from it; otherwise the page shows the code's
documented meaning, as README's error table and the relay give it.
"""

from __future__ import annotations

import json

# The proxy's own codes and the upstream failures it names (README, "Errors").
ERROR_MEANINGS = {
    "invalid_api_key": "The key is missing, unknown, revoked or expired.",
    "model_not_allowed": "The model is not allowed for this key.",
    "insufficient_quota": "The budget, token or request quota of the key, the user or the "
    "team is spent for this period.",
    "team_changed": "The user's team changed again and again while the request was granted.",
    "rate_limit_exceeded": "Over the key's requests or tokens per minute, or its concurrent "
    "requests.",
    "invalid_type": "The body is not JSON or a field has the wrong type.",
    "invalid_json": "The body is not JSON.",
    "missing_model": "The body names no model.",
    "missing_required_parameter": "A parameter the proxy needs is missing (a strict budget "
    "needs an output maximum).",
    "request_too_large": "The body is over the proxy's size limit (PROXY_MAX_BODY_BYTES).",
    "unknown_url": "A path the proxy does not serve.",
    "route_not_supported": "An OpenAI route of stored objects the proxy does not yet keep to "
    "their owner.",
    "invalid_multipart": "The upload is not the multipart form its Content-Type says.",
    "upstream_error": "OpenAI was unreachable or too slow.",
    "upstream_timeout": "OpenAI did not answer in time.",
    "upstream_unreachable": "OpenAI could not be reached.",
    "upstream_auth_failed": "OpenAI refused the proxy's own upstream key.",
    "upstream_busy": "Every upstream connection was busy; nothing was sent to OpenAI.",
    "model_not_priced": "The model is unknown to the price table or has no price, and the "
    "key has a budget.",
    "tool_not_priced": "A built-in tool with no fee in the table, on a key with a budget.",
    "unsupported_parameter": "A parameter the proxy does not relay (`file_id` in a message "
    "part, `conversation`).",
    "integer_above_max_value": "`n` over 128, or a maximum over 2³¹−1.",
    "client_disconnected": "The client went away before the answer ended.",
    "batch_cancelled": "The batch was cancelled.",
    "batch_failed": "The batch failed.",
    "batch_expired": "The batch expired before it completed.",
}


def error_message_received(*, error_code: str, response_body: str) -> str:
    """The message the client was answered with, when the body was stored in OpenAI's error
    shape; else the code's documented meaning; else empty."""
    try:
        error = json.loads(response_body)["error"]
        message = error["message"] if isinstance(error, dict) else ""
    except (ValueError, KeyError, TypeError):
        message = ""
    if isinstance(message, str) and message:
        return message
    return ERROR_MEANINGS.get(error_code, "")
