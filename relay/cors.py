"""CORS for /v1, which runs without Django's middleware (proxyserver.asgi): the same settings
django-cors-headers reads for the rest of the site (CORS_ALLOWED_ORIGINS,
CORS_ALLOWED_ORIGIN_REGEXES, CORS_PREFLIGHT_MAX_AGE), applied at the ASGI level.

Off (None) unless an origin is allowed, so that a /v1 request then costs no work at all. A
preflight is answered without a key: browsers never send credentials on one.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.http import HttpResponse

Send = Callable[[dict], Awaitable[None]]

# What the SDKs read from a response: the request id, retry advice, rate-limit and the
# proxy's own quota headers. A browser hides every header not listed here from the page.
EXPOSED_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-proxy-budget-remaining-usd",
    "x-proxy-requests-remaining",
    "x-proxy-tokens-remaining",
)
_METHODS = b"GET, POST, DELETE, OPTIONS"


def _header(scope: dict, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


class CorsPolicy:
    def __init__(
        self, origins: list[str], regexes: list[str], expose: list[str], max_age: int
    ) -> None:
        self.origins = {origin.encode() for origin in origins}
        self.regexes = [re.compile(pattern.encode()) for pattern in regexes]
        self.expose = ", ".join(dict.fromkeys([*EXPOSED_HEADERS, *expose])).encode()
        self.max_age = str(max_age).encode()

    @classmethod
    def from_settings(cls) -> CorsPolicy | None:
        origins = list(getattr(settings, "CORS_ALLOWED_ORIGINS", []))
        regexes = list(getattr(settings, "CORS_ALLOWED_ORIGIN_REGEXES", []))
        if not origins and not regexes:
            return None
        return cls(
            origins,
            regexes,
            list(getattr(settings, "CORS_EXPOSE_HEADERS", [])),
            int(getattr(settings, "CORS_PREFLIGHT_MAX_AGE", 86400)),
        )

    def allowed_origin(self, scope: dict) -> bytes:
        """The request's Origin if it is allowed, else b""."""
        origin = _header(scope, b"origin")
        if origin and (origin in self.origins or any(r.match(origin) for r in self.regexes)):
            return origin
        return b""

    @staticmethod
    def is_preflight(scope: dict) -> bool:
        return scope["method"] == "OPTIONS" and bool(
            _header(scope, b"access-control-request-method")
        )

    def preflight(self, scope: dict) -> HttpResponse:
        """The answer to a preflight; `wrap` adds the allow-origin header when it is allowed.
        The requested headers are allowed as asked: the origin is trusted, and the relay
        forwards only its own short list upstream whatever a client sends (relay.upstream),
        so the SDKs' changing x-stainless-* headers need no list here."""
        response = HttpResponse(status=204)
        if self.allowed_origin(scope):
            response["Access-Control-Allow-Methods"] = _METHODS.decode()
            asked = _header(scope, b"access-control-request-headers")
            if asked:
                response["Access-Control-Allow-Headers"] = asked.decode("latin-1")
            response["Access-Control-Max-Age"] = self.max_age.decode()
        return response

    def wrap(self, scope: dict, send: Send) -> Send:
        """`send`, adding the allow-origin headers to the response start when the request's
        origin is allowed (every response: errors, streams and the preflight alike)."""
        origin = self.allowed_origin(scope)
        extra = [(b"vary", b"origin")]
        if origin:
            extra += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", self.expose),
            ]

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_cors
