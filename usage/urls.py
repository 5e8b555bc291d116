"""The dashboards, mounted under /dashboard/."""

from __future__ import annotations

from django.urls import path

from usage import team_views, views

app_name = "usage"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("usage.csv", views.dashboard_csv, name="dashboard_csv"),
    path("users/<str:username>/", views.user_dashboard, name="user_dashboard"),
    path("users/<str:username>/usage.csv", views.user_dashboard_csv, name="user_dashboard_csv"),
    path("requests/<int:record_id>/", views.request_detail, name="request_detail"),
    path("teams/<int:team_id>/", team_views.team_dashboard, name="team_dashboard"),
]
