from __future__ import annotations

app_name = "keys"
urlpatterns: list = []
