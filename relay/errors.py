"""The proxy's own errors, in OpenAI's shape, so every SDK raises the right exception class."""

from __future__ import annotations

import orjson
from django.http import HttpResponse


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def invalid_api_key(message: str = "Incorrect API key provided.") -> HttpResponse:
    return openai_error(401, message, code="invalid_api_key")


def insufficient_quota(message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    # x-should-retry: false stops the SDK from retrying a quota 429 twice for nothing.
    return openai_error(
        429,
        message,
        type="insufficient_quota",
        code="insufficient_quota",
        headers={"x-should-retry": "false", **(headers or {})},
    )


def rate_limited(message: str, *, kind: str, retry_after: int) -> HttpResponse:
    return openai_error(
        429,
        message,
        type=kind,
        code="rate_limit_exceeded",
        headers={"retry-after": str(retry_after), "retry-after-ms": str(retry_after * 1000)},
    )


def not_found(path: str) -> HttpResponse:
    return openai_error(
        404,
        f"Invalid URL (/v1/{path}): this proxy does not serve it.",
        code="unknown_url",
    )


def body_too_large(limit: int) -> HttpResponse:
    return openai_error(
        413, f"Request body is larger than {limit} bytes.", code="request_too_large"
    )


def method_not_allowed(method: str, path: str) -> HttpResponse:
    return openai_error(405, f"{method} is not served on {path}.", code="method_not_allowed")


def wrong_base_url(method: str, path: str, base_url: str) -> HttpResponse:
    """A path outside /v1: most often a base_url that lacks it, which this names. `path` must
    not hold a proxy key (the handler masks it): the answer is also what a log would show."""
    return openai_error(
        404,
        f"Invalid URL ({method} {path}): this proxy serves the OpenAI API under /v1 — set "
        f"base_url to {base_url}",
        code="unknown_url",
    )


def upstream_timeout() -> HttpResponse:
    return openai_error(
        504, "OpenAI did not answer in time.", type="upstream_error", code="upstream_timeout"
    )


def upstream_busy() -> HttpResponse:
    # 503 with retry-after, as for a database away: the SDKs retry it; nothing was sent.
    return openai_error(
        503,
        "The proxy is busy: all its connections to OpenAI are in use (PROXY_UPSTREAM_MAX_CONNECTIONS) "
        "and none came free within PROXY_UPSTREAM_QUEUE_SECONDS; try again in a moment.",
        type="server_error",
        code="upstream_busy",
        headers={"retry-after": "1"},
    )


def upstream_unreachable(message: str) -> HttpResponse:
    return openai_error(502, message, type="upstream_error", code="upstream_unreachable")


def database_unavailable() -> HttpResponse:
    # 503 with retry-after: the SDKs retry it, and it is over when the database is back.
    return openai_error(
        503,
        "The proxy's database is unavailable; try again in a moment.",
        type="server_error",
        code="database_unavailable",
        headers={"retry-after": "1"},
    )


def proxy_error() -> HttpResponse:
    return openai_error(
        500, "The proxy failed on this request.", type="server_error", code="proxy_error"
    )
