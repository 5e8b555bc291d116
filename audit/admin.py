"""The audit trail in the admin: newest first, filterable by who, what and how, read-only."""

from __future__ import annotations

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from django.contrib import admin

admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditTrailAdmin(LogEntryAdmin):
    list_display = ("created", "actor_display", "via", "action", "resource_url", "msg_short")
    list_filter = (*LogEntryAdmin.list_filter, "actor")
    fieldsets = [
        (None, {"fields": ["created", "user_url", "via", "resource_url"]}),
        ("Changes", {"fields": ["action", "msg"]}),
    ]
    readonly_fields = [*LogEntryAdmin.readonly_fields, "via"]

    @admin.display(description="by")
    def actor_display(self, obj: LogEntry) -> str:
        if obj.actor is not None:
            return obj.actor.get_username()
        data = obj.additional_data or {}
        return data.get("os_user", "—")

    @admin.display(description="through")
    def via(self, obj: LogEntry) -> str:
        return (obj.additional_data or {}).get("via", "—")
