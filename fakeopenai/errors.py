"""Errors in OpenAI's shape, and the failures a request asks for with `fake.fail_status`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:  # knobs.py raises OpenAIError, so the import only goes one way at run time
    from fakeopenai.knobs import Knobs

# Status -> (type, code, message) when a `fail_status` knob gives no more.
_FAILURES = {
    400: ("invalid_request_error", None, "Invalid request (fake)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden (fake)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (fake)."),
    408: ("invalid_request_error", None, "Request timed out (fake)."),
    409: ("invalid_request_error", None, "Conflict (fake)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (fake)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape; raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


def requested_failure(knobs: Knobs) -> OpenAIError:
    status = knobs.fail_status or 500
    type_, code, message = _FAILURES.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Fake failure {status}.",
        ),
    )
    headers = {}
    if knobs.retry_after is not None:
        headers["retry-after"] = knobs.retry_after
    if knobs.retry_after_ms is not None:
        headers["retry-after-ms"] = knobs.retry_after_ms
    if knobs.should_retry is not None:
        headers["x-should-retry"] = "true" if knobs.should_retry else "false"
    return OpenAIError(
        status,
        knobs.fail_message or message,
        type_=knobs.fail_type or type_,
        code=knobs.fail_code if knobs.fail_code is not None else code,
        headers=headers,
    )
