"""Keys and limits API, mounted at /api/."""

from __future__ import annotations

from django.urls import path

from keys import apis

app_name = "keys"
urlpatterns = [
    path("keys/", apis.ApiKeysApi.as_view(), name="key_list"),
    path("keys/<int:key_id>/", apis.ApiKeyApi.as_view(), name="key_detail"),
    path("users/<str:username>/limits/", apis.UserLimitsApi.as_view(), name="user_limits"),
]
