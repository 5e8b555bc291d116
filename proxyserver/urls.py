"""Every URL of the proxy: the relay under /v1, the usage API and dashboards, the admin."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from keys import account_views
from keys import views as keys_views
from proxyserver import health, metrics, sso
from relay import views as relay_views

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("v1/proxy/me", relay_views.proxy_me, name="proxy_me"),
    re_path(r"^v1/(?P<path>.*)$", relay_views.relay, name="relay"),
    # The original proxy's URL form: the key in the path, any bearer value ignored.
    re_path(r"^(?P<url_key>sk-proxy-[A-Za-z0-9_-]+)/v1/proxy/me$", relay_views.proxy_me),
    re_path(r"^(?P<url_key>sk-proxy-[A-Za-z0-9_-]+)/v1/(?P<path>.*)$", relay_views.relay),
    path("create_api_key/<str:username>", keys_views.create_api_key_legacy, name="create_api_key"),
    path("admin/", admin.site.urls),
    path("api/", include("keys.urls")),
    path("api/", include("usage.api_urls")),
    path("dashboard/", include("usage.urls")),
    path("accounts/login/", sso.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Single sign-on (proxyserver.sso): /oidc/authenticate/ and the provider's /oidc/callback/.
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("accounts/keys/", account_views.account_keys, name="account_keys"),
    path(
        "accounts/keys/<int:key_id>/rotate",
        account_views.account_key_rotate,
        name="account_key_rotate",
    ),
    path(
        "accounts/keys/<int:key_id>/revoke",
        account_views.account_key_revoke,
        name="account_key_revoke",
    ),
    path("accounts/invite/<uidb64>/<token>/", account_views.InviteView.as_view(), name="invite"),
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path(
        "accounts/password/reset/",
        auth_views.PasswordResetView.as_view(),
        name="password_reset",
    ),
    path(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("", RedirectView.as_view(pattern_name="usage:dashboard", permanent=False)),
]

# A path nothing serves: OpenAI's error shape for API clients (a browser gets Django's page).
handler404 = "relay.views.unknown_url"
