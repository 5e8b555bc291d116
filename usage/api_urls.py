from __future__ import annotations

app_name = "usage_api"
urlpatterns: list = []
