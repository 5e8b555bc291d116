"""Who is calling: the proxy key from `Authorization: Bearer` or the original key-in-URL form."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from keys.selectors import KeyInfo, key_info_cached, key_info_for_secret
from relay import errors
from relay.database import UNAVAILABLE, in_db_thread


def secret_from(authorization: str, url_key: str | None) -> str:
    """The key a request presents: the one in its URL, else its bearer value."""
    if url_key:
        return url_key
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def authenticate(
    request: HttpRequest, url_key: str | None, now: dt.datetime
) -> KeyInfo | HttpResponse:
    """The caller's active key, or the error to answer with."""
    return await authenticate_secret(
        secret_from(request.headers.get("Authorization", ""), url_key), now
    )


async def authenticate_secret(secret: str, now: dt.datetime) -> KeyInfo | HttpResponse:
    """The active key of `secret`, or the error to answer with. Needs no body: the relay's
    handler calls it from the headers alone, before a byte of the body is read."""
    if not secret:
        return errors.invalid_api_key(
            "You didn't provide an API key. Send your proxy key as 'Authorization: Bearer KEY'."
        )
    key = None
    if secret.startswith(settings.PROXY_KEY_PREFIX):
        found, key = key_info_cached(secret)
        if not found:
            try:
                key = await in_db_thread(key_info_for_secret, secret)
            except UNAVAILABLE:
                return errors.database_unavailable()
    if key is None:
        return errors.invalid_api_key(
            "Incorrect API key provided: the proxy key is unknown or revoked."
        )
    if key.expires_at is not None and key.expires_at <= now:
        return errors.invalid_api_key("Incorrect API key provided: this proxy key has expired.")
    return key
