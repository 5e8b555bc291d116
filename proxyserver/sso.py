"""Single sign-on with OpenID Connect (mozilla-django-oidc): the admin and the dashboards log in
through the organisation's identity provider.

Off unless OIDC_RP_CLIENT_ID is set (with the provider's endpoints; sample.env). A user is
matched by email — only a verified one (`email_verified` must not be false), else anyone who
can put an address in their profile at the provider could take over the account holding it —
or created on first login, named by `preferred_username` when free. Staff comes from the
provider: a user whose groups claim (OIDC_GROUPS_CLAIM) holds OIDC_STAFF_GROUP is made staff
and superuser (an operator) at each login, and loses both at the next login without it.
Password logins keep working beside it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

log = logging.getLogger(__name__)


def sso_enabled() -> bool:
    return bool(getattr(settings, "OIDC_RP_CLIENT_ID", ""))


class ProxyOIDCBackend(OIDCAuthenticationBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Read the provider's settings when a login uses them, not whenever Django lists the
        # backends (a password login would fail on an unconfigured provider otherwise).
        self.UserModel = get_user_model()

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        if not sso_enabled() or request is None or "code" not in request.GET:
            return None  # not an OIDC callback: a password login, or SSO off
        super().__init__()
        return super().authenticate(request, **kwargs)

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        if not claims.get("email"):
            log.warning("SSO login refused: the provider sent no email")
            return False
        if claims.get("email_verified") is False:
            log.warning("SSO login refused: the provider has not verified the email")
            return False
        return True

    def get_username(self, claims: dict[str, Any]) -> str:
        wanted = str(claims.get("preferred_username") or claims["email"].split("@")[0])[:150]
        taken = self.UserModel.objects.filter(username=wanted).exists()
        return super().get_username(claims) if taken else wanted

    def create_user(self, claims: dict[str, Any]) -> Any:
        # Made with no usable password (create_user without one): SSO is how they log in.
        return self.update_user(super().create_user(claims), claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
        if isinstance(groups, str):
            groups = [groups]
        staff = bool(settings.OIDC_STAFF_GROUP) and settings.OIDC_STAFF_GROUP in groups
        changed = staff != user.is_staff or staff != user.is_superuser
        user.is_staff = user.is_superuser = staff
        for field, claim in (("first_name", "given_name"), ("last_name", "family_name")):
            value = str(claims.get(claim) or "")[:150]
            if value and getattr(user, field) != value:
                setattr(user, field, value)
                changed = True
        if changed or user._state.adding:
            user.save()
        return user


class LoginView(auth_views.LoginView):
    """The login page, with a "Log in with …" button when single sign-on is on."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        if sso_enabled():
            context["sso_name"] = settings.OIDC_PROVIDER_NAME
            context["sso_failed"] = self.request.GET.get("sso") == "failed"
        return context


class AuthenticateView(OIDCAuthenticationRequestView):
    """Off (404) unless single sign-on is configured."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        return super().get(request)
