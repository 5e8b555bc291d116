"""Alerts and every try at delivering them, read-only: what was owed, to whom, and how each
try went."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from alerts import messages
from alerts.models import Alert, AlertDelivery
from keys.admin import money_column, read_only_fields


class ReadOnly:
    """Nobody adds, edits or deletes alerts by hand: they are the proxy's record of what it
    owed and sent."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AlertDeliveryInline(ReadOnly, admin.TabularInline):
    model = AlertDelivery
    extra = 0
    fields = ("attempt", "channel", "target", "started_at", "duration_ms", "ok", "status_code",
              "error")  # fmt: skip
    readonly_fields = fields
    ordering = ("attempt", "channel")


@admin.register(Alert)
class AlertAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("created_at", "kind", "scope", "username", "team_name", "key_prefix",
                    "threshold", "period", "budget", "spent", "status", "attempts",
                    "sent_at")  # fmt: skip
    list_filter = ("status", "kind", "scope", "threshold", "period", "created_at")
    search_fields = ("=username", "=team_name", "^key_prefix")
    date_hierarchy = "created_at"
    inlines = (AlertDeliveryInline,)
    budget = money_column("budget_usd", "budget (USD)")
    spent = money_column("spent_usd", "spent (USD)")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = read_only_fields(Alert, {"budget_usd": "budget", "spent_usd": "spent"})
        return [*fields, "payload"]

    @admin.display(description="payload (as sent, with the time of its try)")
    def payload(self, obj: Alert) -> str:
        body = messages.payload(obj, sent_at=obj.sent_at or obj.created_at)
        return format_html("<pre>{}</pre>", json.dumps(body, indent=2))


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("started_at", "alert", "attempt", "channel", "target", "ok", "status_code",
                    "duration_ms", "error")  # fmt: skip
    list_filter = ("ok", "channel", "alert__kind", "started_at")
    search_fields = ("=alert__username", "^alert__key_prefix")
    list_select_related = ("alert",)
    date_hierarchy = "started_at"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return read_only_fields(AlertDelivery, {})
