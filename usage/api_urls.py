"""The usage API and the OpenAPI schema of all of /api/, mounted at /api/."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularRedocView

from usage import apis

app_name = "usage_api"
urlpatterns = [
    path("usage/", apis.UsageRecordListApi.as_view(), name="record_list"),
    path("usage/summary/", apis.UsageSummaryApi.as_view(), name="summary"),
    path("usage/<int:record_id>/", apis.UsageRecordDetailApi.as_view(), name="record_detail"),
    # The docs pages load Swagger UI and Redoc from drf_spectacular_sidecar's static files,
    # served by this app: no CDN.
    path("schema/", apis.SchemaApi.as_view(), name="schema"),
    path("docs/", apis.SwaggerDocsView.as_view(url_name="usage_api:schema"), name="docs"),
    path(
        "redoc/",
        SpectacularRedocView.as_view(url_name="usage_api:schema", template_name="api/redoc.html"),
        name="redoc",
    ),
]
