"""Keys and limits API, mounted at /api/."""

from __future__ import annotations

from django.urls import path

from keys import apis, team_apis

app_name = "keys"
urlpatterns = [
    path("keys/", apis.ApiKeysApi.as_view(), name="key_list"),
    path("keys/<int:key_id>/", apis.ApiKeyApi.as_view(), name="key_detail"),
    path("users/<str:username>/limits/", apis.UserLimitsApi.as_view(), name="user_limits"),
    path("teams/", team_apis.TeamsApi.as_view(), name="team_list"),
    path("teams/<int:team_id>/", team_apis.TeamApi.as_view(), name="team_detail"),
    path(
        "teams/<int:team_id>/members/<str:username>/",
        team_apis.TeamMemberApi.as_view(),
        name="team_member",
    ),
]
