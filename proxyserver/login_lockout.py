"""Password logins resist guessing: django-axes wired into this site.

Every password login goes through `django.contrib.auth.authenticate()`: the admin's and the
dashboard's login forms, HTTP Basic on /api/ (keys.authentication.BasicAuthentication) and the
original `/create_api_key` route. Axes' backend (first in AUTHENTICATION_BACKENDS) refuses a
locked-out login before any password is checked, its signal handler counts each failure in the
database per username and per client address, and `AxesMiddleware` swaps the view's answer
for `lockout_response` once a login is locked out. /v1 never calls `authenticate()` (a proxy
key is not a login) and is served without middleware (proxyserver.asgi), so none of this
runs there. Staff unlock with the admin's "Access attempts" or `manage.py axes_reset_*`.
"""

from __future__ import annotations

import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import BadRequest, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, QueryDict, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render

from relay.errors import openai_error

# Answered in OpenAI's error shape: scripts and SDK-style clients read JSON there.
JSON_PATH_PREFIXES = ("/api/", "/create_api_key/")
# AccessAttempt.username holds this many characters.
_USERNAME_MAX = 255


class LoginLockoutBackend(AxesStandaloneBackend):
    """Axes' backend (first in AUTHENTICATION_BACKENDS), for logins that came over HTTP.

    Axes refuses an `authenticate()` call with no request. Every login this site serves passes
    one (Django's login forms, keys.authentication.BasicAuthentication, /create_api_key); the
    calls with none are Django's test client `login()` and shell sessions, with no address to
    count: they are let through to the password check instead of raising.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


class LoginAttemptHandler(AxesDatabaseHandler):
    """Axes' database handler, made to count every failure whatever the request body holds."""

    def user_login_failed(
        self, sender: Any, credentials: dict, request: HttpRequest | None = None, **kwargs: Any
    ) -> None:
        # Axes copies the request's form fields into the attempt row. A body Django cannot
        # read as a form (over a thousand fields, broken multipart, too big) raises there,
        # before the failure is counted: sent with a Basic header, every guess would go
        # uncounted. Such a failure is counted with no form data instead.
        if request is not None:
            try:
                request.POST  # noqa: B018 (parsed here so that a bad body fails here)
            except (BadRequest, SuspiciousOperation, MultiPartParserError, UnreadablePostError):
                request.POST = QueryDict()
        super().user_login_failed(sender, credentials, request, **kwargs)


def client_ip(request: HttpRequest) -> str | None:
    """The address a failure is counted against: the peer uvicorn reports.

    Behind a reverse proxy listed in FORWARDED_ALLOW_IPS, uvicorn has already replaced the
    peer with the client that proxy names in X-Forwarded-For; a header from anyone else is
    ignored. Named here so that installing django-ipware (which axes would otherwise pick up,
    trusting the left-most X-Forwarded-For that any client can write) changes nothing.
    """
    return request.META.get("REMOTE_ADDR")


def attempt_username(request: HttpRequest, credentials: dict | None) -> str | None:
    """The username a failure is counted against, as typed, cut to what the table holds.

    HTTP Basic and /create_api_key take a name of any length; a longer one than the column
    would make PostgreSQL refuse the attempt row (a 500, and a failure left uncounted).
    """
    field = get_user_model().USERNAME_FIELD
    if credentials:
        username = credentials.get(field)
    else:
        username = request.POST.get(field)
    return None if username is None else str(username)[:_USERNAME_MAX]


def cool_off_minutes() -> int:
    return math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)


def lockout_message() -> str:
    minutes = cool_off_minutes()
    span = f"{minutes} minute{'s' if minutes != 1 else ''}"
    return (
        f"Too many failed logins for this account or from this address: logins are locked "
        f"for {span}, and each further try starts the {span} again. Ask an operator to "
        "unlock it sooner."
    )


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: what a locked-out login is answered with, 429 and Retry-After.

    429, not 403: it is "too many attempts, come back later", which Retry-After says when,
    like the proxy's other rate limits; 401 and 403 already mean wrong credentials and not
    allowed. `original_response` and `credentials` are unused: axes' async middleware passes
    the credentials in the response's place.
    """
    retry_after = str(math.ceil(settings.AXES_COOLOFF_TIME.total_seconds()))
    if request.path_info.startswith(JSON_PATH_PREFIXES):
        # x-should-retry: false, because an automatic retry is one more try: it only
        # restarts the cool-off.
        return openai_error(
            429,
            lockout_message(),
            type="requests",
            code="login_locked_out",
            headers={"Retry-After": retry_after, "x-should-retry": "false"},
        )
    response = render(
        request,
        "registration/login_locked_out.html",
        {"minutes": cool_off_minutes()},
        status=429,
    )
    response["Retry-After"] = retry_after
    return response
