"""Who is calling /api/: a proxy key as `Authorization: Bearer`, beside session and Basic logins.

A proxy key is a key, not a login: it always sees its own user's data only, even when that
user is staff (`staff_login`), so a leaked key never opens anyone else's usage. A Basic login
is a login: its failures count towards the lockout (proxyserver.login_lockout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.authentication import BasicScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from keys.models import ApiKey
from keys.selectors import KeyInfo, key_info_for_secret

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from rest_framework.request import Request
    from rest_framework.views import APIView


class ProxyKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer sk-proxy-…`; `request.auth` is the key's `KeyInfo`."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, KeyInfo] | None:
        # Parsed as DRF's TokenAuthentication does: another scheme is someone else's to
        # answer, but a malformed Bearer header is refused rather than ignored.
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() != self.keyword.lower().encode():
            return None
        if len(auth) == 1:
            raise exceptions.AuthenticationFailed("Invalid bearer header. No key provided.")
        if len(auth) > 2:
            raise exceptions.AuthenticationFailed(
                "Invalid bearer header. The key should not contain spaces."
            )
        try:
            secret = auth[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                "Invalid bearer header. The key contains invalid characters."
            ) from None
        return self.authenticate_credentials(secret)

    def authenticate_credentials(self, secret: str) -> tuple[AbstractBaseUser, KeyInfo]:
        if not secret.startswith(settings.PROXY_KEY_PREFIX):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        info = key_info_for_secret(secret)
        if info is None:
            # Unknown and revoked keys get the same answer: which one it was is nobody's
            # business but the key's owner, who can see it in the admin or /api/keys/.
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if info.expires_at is not None and info.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed("This API key has expired.")
        # The key info is cached for a few seconds: check the key row itself, so a key revoked
        # (or a user deactivated) by another process is refused at once here too.
        api_key = (
            ApiKey.objects.select_related("user")
            .filter(pk=info.id, revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        return api_key.user, info

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class BasicAuthentication(authentication.BasicAuthentication):
    """DRF's HTTP Basic, with its failures counted and its lockouts answered by django-axes."""

    def authenticate_credentials(
        self, userid: str, password: str, request: Request | None = None
    ) -> tuple[AbstractBaseUser, None]:
        # DRF passes its own Request to authenticate(). Axes marks a lockout on the object it
        # is given, and AxesMiddleware, which answers it, only sees Django's HttpRequest; axes
        # also reads the form body from it, which on DRF's Request parses JSON and raises on a
        # malformed body before the failure is counted. So axes gets Django's request.
        return super().authenticate_credentials(
            userid, password, getattr(request, "_request", request)
        )


def staff_login(request: Request) -> bool:
    """A staff member logged in with a password (session or Basic), not through a proxy key."""
    return bool(request.user and request.user.is_staff) and not isinstance(request.auth, KeyInfo)


class IsStaffLogin(BasePermission):
    message = "Only staff, logged in with a password, may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return staff_login(request)


class ApiAuthMixin:
    # Answers a missing or bad credential with 401 and a challenge for every scheme /api/
    # accepts. DRF asks only the first authentication class for a `WWW-Authenticate`
    # challenge; session auth (first in settings) has none, which would turn "no key" or
    # "revoked key" into a 403. (A comment, not a docstring: the schema would show it.)

    def get_authenticate_header(self, request: Request) -> str | None:
        challenges = [a.authenticate_header(request) for a in self.get_authenticators()]
        return ", ".join(c for c in challenges if c) or None


class BasicLoginScheme(BasicScheme):
    """Our Basic is DRF's Basic in the OpenAPI schema (extensions match the exact class)."""

    target_class = BasicAuthentication


class ProxyKeyScheme(OpenApiAuthenticationExtension):
    """Names the proxy key in the OpenAPI schema, so Swagger UI offers a place to paste one."""

    target_class = ProxyKeyAuthentication
    name = "proxyKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": f"A proxy key (`{settings.PROXY_KEY_PREFIX}…`): sees its own "
            "user's data only.",
        }
